//! What the next incarnation of a notebook cgroup gets: a unit or container made again at the
//! same path is judged by the kernel from its first exec (`cgroup_mkdir` program), not from
//! whenever the agent notices the new cgroup id.

use std::path::Path;

use anyhow::Result;
use aya::maps::{HashMap as BpfHash, MapData};
use guard_abi::{cgroup_path_hash, names, Placement, INCARNATION_PATH_MAX};

use crate::sensors::maps::MapWrite;

pub struct Incarnations {
    map: BpfHash<MapData, u64, Placement>,
    /// What we wrote (path hash → value), to skip rewrites and to know whether any
    /// incarnation would be enforced.
    now: crate::IdMap<u64, Placement>,
}

/// The key of `rel` (a path relative to the cgroup2 root, as `/system.slice/x.service`), or
/// None for a path the kernel's hash does not cover whole.
pub fn key(rel: &Path) -> Option<u64> {
    let b = rel.as_os_str().as_encoded_bytes();
    (b.len() < INCARNATION_PATH_MAX && b.first() == Some(&b'/') && !b.contains(&0)).then(|| cgroup_path_hash(b))
}

impl Incarnations {
    /// Takes over the map; what a previous agent left there is dropped (its policy may differ,
    /// and its egress policy ids are gone): each notebook the agent places writes its own.
    pub fn new(mut map: BpfHash<MapData, u64, Placement>) -> Self {
        let old: Vec<u64> = map.keys().flatten().collect();
        for k in old {
            let _ = map.remove(&k);
        }
        Self { map, now: Default::default() }
    }

    /// What every new cgroup at `rel` gets (`Placement::default()`: nothing).
    pub fn remember(&mut self, rel: &Path, inc: Placement) -> Result<()> {
        let Some(k) = key(rel) else { return Ok(()) };
        if inc == Placement::default() {
            if self.now.remove(&k).is_some() {
                let _ = self.map.remove(&k);
            }
            return Ok(());
        }
        if self.now.get(&k) == Some(&inc) {
            return Ok(());
        }
        self.map
            .insert(k, inc, 0)
            .in_map(names::INCARNATIONS, || format!("remembering the next incarnation of {}", rel.display()))?;
        self.now.insert(k, inc);
        Ok(())
    }

    /// True while some incarnation to come would be enforced.
    pub fn enforcing(&self) -> bool {
        self.now.values().any(|i| i.enforce != 0)
    }

    /// Forgets every path (a policy reload writes them again as it places the notebooks).
    pub fn clear(&mut self) {
        for k in self.now.keys() {
            let _ = self.map.remove(k);
        }
        self.now.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_whole_absolute_paths_only() {
        let unit = Path::new("/system.slice/jupyter-alice.service");
        assert_eq!(key(unit), Some(cgroup_path_hash(b"/system.slice/jupyter-alice.service\0junk")));
        assert_ne!(key(unit), key(Path::new("/system.slice/jupyter-bob.service")));
        assert_eq!(key(Path::new("system.slice/x")), None);
        let long = format!("/{}", "a".repeat(INCARNATION_PATH_MAX));
        assert_eq!(key(Path::new(&long)), None);
    }
}
