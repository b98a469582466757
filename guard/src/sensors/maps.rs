//! The kernel maps' capacities (what `--map-size` sets) and what a failed write into one says.
//!
//! Every map the agent writes per event has a fixed capacity chosen when it is loaded. A
//! notebook can fill one (thousands of marked processes, a fork bomb under Python): the write
//! then fails with E2BIG (hash maps) or ENOSPC (the LPM trie), which the agent reports as a
//! `guard.error` naming the map and the flag that grows it, and goes on.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Result};
use aya::maps::{HashMap as BpfHash, MapData};
use guard_abi::{dns, names, ByteKey, FileKey, Placement};

/// The kernel's exec-enforcement maps, handed to `enforce::KernelEnforcer` once.
pub struct EnforcementMaps {
    pub enforced: BpfHash<MapData, u64, u32>,
    pub allowed: BpfHash<MapData, FileKey, u32>,
    pub marks: BpfHash<MapData, u32, u32>,
    pub servers: BpfHash<MapData, u32, u32>,
    pub incarnations: BpfHash<MapData, u64, Placement>,
    pub scopes: BpfHash<MapData, u32, Placement>,
    pub kernel_commands: BpfHash<MapData, ByteKey, u32>,
    pub launchers: BpfHash<MapData, ByteKey, u32>,
}

/// The egress maps: notebook cgroup → policy, and the policies' LPM rules and name tables.
pub struct EgressMaps {
    pub cgroups: BpfHash<MapData, u64, u32>,
    pub rules: aya::maps::LpmTrie<MapData, guard_abi::EgressKey, guard_abi::EgressRule>,
    pub names: BpfHash<MapData, dns::NameKey, dns::NameNode>,
    pub ports: BpfHash<MapData, dns::DomainPortKey, u64>,
    pub ttl: BpfHash<MapData, u32, dns::DnsTtl>,
    pub fan_out: aya::maps::Array<MapData, guard_abi::fanout::FanoutConf>,
}

/// A capacity an operator can set: the maps it sizes and what one entry is.
pub struct Capacity {
    /// The name `--map-size NAME=N` takes.
    pub flag: &'static str,
    pub maps: &'static [&'static str],
    pub default: u32,
    /// What fills it, for `guard run --help` and the alert.
    pub holds: &'static str,
}

/// Every capacity, in the order the README's table lists them.
pub const CAPACITIES: &[Capacity] = &[
    Capacity {
        flag: "cgroups",
        maps: &[names::WATCHED, names::ENFORCED, names::EGRESS_CG],
        default: guard_abi::MAX_WATCHED_CGROUPS,
        holds: "notebook cgroups watched, enforced or under an egress policy",
    },
    Capacity {
        flag: "marks",
        maps: &[names::MARKS],
        default: guard_abi::MAX_MARKED,
        holds: "processes marked as Python, a helper or in a notebook's scope",
    },
    Capacity { flag: "servers", maps: &[names::SERVERS], default: guard_abi::MAX_SERVERS, holds: "notebook servers" },
    Capacity {
        flag: "allowed",
        maps: &[names::ALLOWED],
        default: guard_abi::MAX_ALLOWED,
        holds: "file identities allowed to run in enforced notebooks",
    },
    Capacity {
        flag: "incarnations",
        maps: &[names::INCARNATIONS],
        default: guard_abi::MAX_INCARNATIONS,
        holds: "notebook cgroup paths enforced again when made again",
    },
    Capacity {
        flag: "scopes",
        maps: &[names::SCOPES],
        default: guard_abi::MAX_SCOPES,
        holds: "notebook servers sharing the hub's cgroup (LocalProcessSpawner)",
    },
    Capacity {
        flag: "egress-rules",
        maps: &[names::EGRESS_RULES],
        default: guard_abi::MAX_EGRESS_RULES,
        holds: "egress allow and deny entries, all policies and generations",
    },
    Capacity {
        flag: "egress-names",
        maps: &[dns::names::DNS_NAMES, dns::names::DOMAIN_PORTS],
        default: dns::MAX_DNS_NAMES,
        holds: "labels and port entries of the egress policies' names, all policies and generations",
    },
    Capacity {
        flag: "dns-answers",
        maps: &[dns::names::DNS_ALLOWED],
        default: dns::MAX_DNS_ALLOWED,
        holds: "addresses allowed names resolved to, per notebook (full: the least recently used goes)",
    },
    Capacity {
        flag: "kernel-commands",
        maps: &[names::KERNEL_COMMANDS],
        default: guard_abi::MAX_KERNEL_COMMANDS,
        holds: "commands sanctioned kernels run",
    },
    Capacity {
        flag: "launchers",
        maps: &[names::LAUNCHERS],
        default: guard_abi::MAX_LAUNCHERS,
        holds: "trusted launcher and helper scripts, per root",
    },
];

/// Capacities set on the command line, by flag name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSizes(BTreeMap<&'static str, u32>);

impl MapSizes {
    /// Parses one `NAME=N`.
    pub fn add(&mut self, spec: &str) -> Result<()> {
        let (name, n) = spec.split_once('=').unwrap_or((spec, ""));
        let Some(cap) = CAPACITIES.iter().find(|c| c.flag == name) else {
            let known: Vec<_> = CAPACITIES.iter().map(|c| c.flag).collect();
            bail!("--map-size {spec:?}: unknown map {name:?} (known: {})", known.join(", "));
        };
        match n.parse::<u32>() {
            Ok(n) if n > 0 => {
                self.0.insert(cap.flag, n);
                Ok(())
            }
            _ => bail!("--map-size {spec:?}: expected {name}=N with N a positive number of entries"),
        }
    }

    /// The capacity of kernel map `map` (by its object name), when it is one of ours.
    pub fn of_map(&self, map: &str) -> Option<u32> {
        let cap = CAPACITIES.iter().find(|c| c.maps.contains(&map))?;
        Some(self.0.get(cap.flag).copied().unwrap_or(cap.default))
    }

    /// Only the capacities that differ from the object's own.
    pub fn overrides(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        CAPACITIES
            .iter()
            .filter_map(|c| self.0.get(c.flag).map(|n| (c, *n)))
            .flat_map(|(c, n)| c.maps.iter().map(move |m| (*m, n)))
    }
}

/// A pinned map sized otherwise than asked for is removed, so the load makes it anew at the
/// asked size (aya would adopt it as it is). Its entries are rebuilt as notebooks are found.
pub fn retire_resized(maps_dir: &Path, sizes: &MapSizes) -> Result<()> {
    for c in CAPACITIES {
        for map in c.maps {
            let path = maps_dir.join(map);
            let Ok(info) = aya::maps::MapInfo::from_pin(&path) else { continue };
            let want = sizes.of_map(map).unwrap_or(c.default);
            if info.max_entries() != want {
                tracing::warn!(map, from = info.max_entries(), to = want, "pinned map resized: made anew");
                std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("removing {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// A write into a kernel map that failed.
#[derive(Debug, thiserror::Error)]
#[error("kernel map {map}: {what}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
pub struct MapWriteError {
    pub map: &'static str,
    pub what: String,
    /// The map is full (as opposed to a bad key or a map gone).
    pub full: bool,
    /// The agent's failed syscall; none for writes the kernel programs made and counted.
    #[source]
    source: Option<Box<aya::maps::MapError>>,
}

impl MapWriteError {
    /// `count` writes the kernel programs made into `map` that did not fit.
    pub fn kernel_full(map: &'static str, count: u64) -> Self {
        let what = format!("{count} writes by the kernel programs did not fit");
        MapWriteError { map, what, full: true, source: None }
    }

    /// The `--map-size` name that grows this map.
    pub fn flag(&self) -> Option<&'static str> {
        CAPACITIES.iter().find(|c| c.maps.contains(&self.map)).map(|c| c.flag)
    }
}

/// Names the map a write went to, and tells a full map apart.
pub trait MapWrite<T> {
    fn in_map(self, map: &'static str, what: impl FnOnce() -> String) -> Result<T, MapWriteError>;
}

impl<T> MapWrite<T> for Result<T, aya::maps::MapError> {
    fn in_map(self, map: &'static str, what: impl FnOnce() -> String) -> Result<T, MapWriteError> {
        self.map_err(|source| {
            let full = matches!(&source, aya::maps::MapError::SyscallError(s)
                if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC)));
            MapWriteError { map, what: what(), full, source: Some(Box::new(source)) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_by_flag_and_refuse_what_they_do_not_know() {
        let mut s = MapSizes::default();
        s.add("marks=16").unwrap();
        s.add("cgroups=8").unwrap();
        assert_eq!(s.of_map(names::MARKS), Some(16));
        assert_eq!(s.of_map(names::EGRESS_CG), Some(8));
        assert_eq!(s.of_map(names::SERVERS), Some(guard_abi::MAX_SERVERS));
        assert_eq!(s.of_map(names::EVENTS), None);
        let o: Vec<_> = s.overrides().collect();
        assert!(o.contains(&(names::ENFORCED, 8)) && o.contains(&(names::MARKS, 16)) && o.len() == 4, "{o:?}");
        let e = s.add("mark=3").unwrap_err().to_string();
        assert!(e.contains("unknown map \"mark\"") && e.contains("marks"), "{e}");
        assert!(s.add("marks=0").is_err() && s.add("marks").is_err() && s.add("marks=x").is_err());
    }
}
