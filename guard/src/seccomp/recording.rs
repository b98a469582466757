//! Recordings: which syscalls a notebook made, per architecture, and who it belonged to.
//! Several recordings (users of one image) merge into a [`Coverage`]: per syscall, how many
//! recordings used it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::arch::Arch;

pub const FORMAT: &str = "notebook-guard/seccomp-recording/v1";

/// What a recording file holds: one or more recordings (one per recorded notebook).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingFile {
    pub format: String,
    pub recordings: Vec<Recording>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    pub target: Target,
    /// RFC 3339, when recording started.
    pub started: String,
    pub duration_secs: f64,
    /// Architecture → names of the syscalls made.
    pub syscalls: BTreeMap<Arch, BTreeSet<String>>,
    /// Architecture → distinct syscalls made (the size of each set above plus `unnamed`).
    pub counts: BTreeMap<Arch, usize>,
    /// Numbers libseccomp could not name (a kernel newer than the library).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unnamed: BTreeMap<Arch, BTreeSet<u32>>,
    /// Calls with numbers beyond the recorder's table (should be 0).
    #[serde(default)]
    pub out_of_range: u64,
}

/// Whose syscalls these were.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl RecordingFile {
    pub fn new(recordings: Vec<Recording>) -> Self {
        Self { format: FORMAT.into(), recordings }
    }

    /// Reads and checks a recording file: JSON errors name the field path, and every syscall
    /// name must be one libseccomp knows for its architecture.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let file: RecordingFile = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
        if file.format != FORMAT {
            bail!("{}: format: {:?} is not {FORMAT:?}", path.display(), file.format);
        }
        for (i, r) in file.recordings.iter().enumerate() {
            for (arch, names) in &r.syscalls {
                for n in names {
                    if !arch.knows(n) {
                        bail!("{}: recordings[{i}].syscalls.{arch}: {n:?} is not a {arch} syscall", path.display());
                    }
                }
            }
        }
        Ok(file)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        super::write_atomically(path, text.as_bytes())
    }
}

/// Recordings merged: for each architecture and syscall, how many recordings used it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    /// Number of recordings merged.
    pub recordings: usize,
    pub users: BTreeSet<String>,
    pub images: BTreeSet<String>,
    pub syscalls: BTreeMap<Arch, BTreeMap<String, usize>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unnamed: BTreeMap<Arch, BTreeSet<u32>>,
}

impl Coverage {
    pub fn merge<'a>(recordings: impl IntoIterator<Item = &'a Recording>) -> Self {
        let mut c = Coverage::default();
        for r in recordings {
            c.recordings += 1;
            c.users.extend(r.target.user.clone());
            c.images.extend(r.target.image.clone());
            for (arch, names) in &r.syscalls {
                let m = c.syscalls.entry(*arch).or_default();
                for n in names {
                    *m.entry(n.clone()).or_default() += 1;
                }
            }
            for (arch, nrs) in &r.unnamed {
                c.unnamed.entry(*arch).or_default().extend(nrs);
            }
        }
        c
    }

    /// Adds another coverage (a file `guard seccomp merge` wrote) to this one.
    pub fn add(&mut self, other: &Coverage) {
        self.recordings += other.recordings;
        self.users.extend(other.users.iter().cloned());
        self.images.extend(other.images.iter().cloned());
        for (arch, names) in &other.syscalls {
            let m = self.syscalls.entry(*arch).or_default();
            for (n, count) in names {
                *m.entry(n.clone()).or_default() += count;
            }
        }
        for (arch, nrs) in &other.unnamed {
            self.unnamed.entry(*arch).or_default().extend(nrs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(user: &str, names: &[&str], compat: &[&str]) -> Recording {
        let mut syscalls = BTreeMap::new();
        syscalls.insert(Arch::X86_64, names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        if !compat.is_empty() {
            syscalls.insert(Arch::X86, compat.iter().map(|s| s.to_string()).collect());
        }
        let counts = syscalls.iter().map(|(a, s)| (*a, s.len())).collect();
        Recording {
            target: Target { cgroup: "/x".into(), user: Some(user.into()), ..Default::default() },
            started: "2026-11-22T00:00:00Z".into(),
            duration_secs: 1.0,
            syscalls,
            counts,
            unnamed: BTreeMap::new(),
            out_of_range: 0,
        }
    }

    #[test]
    fn merge_is_the_union_with_per_syscall_counts() {
        let a = rec("alice", &["read", "write", "openat"], &["getpid"]);
        let b = rec("bob", &["read", "mmap"], &[]);
        let c = Coverage::merge([&a, &b]);
        assert_eq!(c.recordings, 2);
        let native = &c.syscalls[&Arch::X86_64];
        let union: BTreeSet<&str> = native.keys().map(|s| s.as_str()).collect();
        assert_eq!(union, BTreeSet::from(["read", "write", "openat", "mmap"]));
        assert_eq!(native["read"], 2);
        assert_eq!(native["mmap"], 1);
        assert_eq!(c.syscalls[&Arch::X86]["getpid"], 1);
        assert_eq!(c.users, BTreeSet::from(["alice".to_string(), "bob".to_string()]));
    }

    #[test]
    fn a_name_from_another_table_is_rejected_with_its_place() {
        let mut f = RecordingFile::new(vec![rec("a", &["read"], &[])]);
        // newfstatat does not exist in the i386 table (it has fstatat64).
        f.recordings[0].syscalls.insert(Arch::X86, BTreeSet::from(["newfstatat".to_string()]));
        let dir = std::env::temp_dir().join(format!("nbg-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.json");
        f.save(&p).unwrap();
        let e = RecordingFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("recordings[0].syscalls.SCMP_ARCH_X86") && e.contains("newfstatat"), "{e}");
        std::fs::write(&p, r#"{"format": "notebook-guard/seccomp-recording/v1", "recordings": [{"target": 3}]}"#)
            .unwrap();
        let e = RecordingFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("recordings[0].target"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
