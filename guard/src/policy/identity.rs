//! Policy paths → file identities, per root filesystem.
//!
//! "Python" is the set of files the configured interpreter paths lead to *inside each
//! notebook's own root*. Paths are resolved with openat2(RESOLVE_IN_ROOT) below
//! `/proc/PID/root`, so a container's absolute symlinks resolve in the container, never on the
//! host. Identities are (device, inode): a copy or rename of a binary never matches.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use super::{
    provenance::{self, Provenance},
    Policy,
};
use crate::sensors::decode::FileId;

pub use super::root::{open_in_root, Root};

/// Directories whose binaries are "system binaries" (masquerade and name lookups).
pub const SYSTEM_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A root filesystem, by the identity of its `/`.
pub type RootKey = FileId;

/// Names and sizes of the system binaries of one root, for masquerade checks.
#[derive(Default)]
pub struct SystemIndex {
    /// Identity → every name it is reachable by in the system dirs (`dash` and `sh`); shared,
    /// since every exec of a system binary asks for them.
    pub names: crate::IdMap<FileId, Arc<[String]>>,
    /// Size → (identity, path) of regular files, to find copies by content.
    by_size: HashMap<u64, Vec<(FileId, PathBuf)>>,
}

impl SystemIndex {
    fn build(root: &Root) -> Self {
        let mut idx = SystemIndex::default();
        let mut names: HashMap<FileId, Vec<String>> = HashMap::new();
        // With a merged /usr, /bin and /sbin are /usr/bin and /usr/sbin: list each once.
        let mut listed = crate::IdSet::default();
        for dir in SYSTEM_DIRS {
            let Ok((id, entries)) = root.list(Path::new(dir)) else {
                continue;
            };
            if !listed.insert(id) {
                continue;
            }
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = Path::new(dir).join(&name);
                // A regular file is stat'ed where it was listed; a symlink is followed inside
                // the root.
                let md = if e.file_type().is_ok_and(|t| t.is_file()) { e.metadata() } else { root.stat(&rel) };
                let Ok(md) = md else { continue };
                if !md.is_file() || md.mode() & 0o111 == 0 {
                    continue;
                }
                let id = FileId::of(&md);
                let names = names.entry(id).or_default();
                if !names.contains(&name) {
                    names.push(name);
                }
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    idx.by_size.entry(md.size()).or_default().push((id, rel));
                }
            }
        }
        idx.names = names.into_iter().map(|(id, n)| (id, n.into())).collect();
        idx
    }

    /// The system binary whose content equals `content` (same size, same SHA-256).
    pub fn same_content(&self, root: &Root, content: &[u8]) -> Option<FileId> {
        let candidates = self.by_size.get(&(content.len() as u64))?;
        let want = Sha256::digest(content);
        candidates
            .iter()
            .find(|(_, p)| root.read(p, content.len() as u64 + 1).is_ok_and(|c| Sha256::digest(&c) == want))
            .map(|(id, _)| *id)
    }
}

pub struct RootIdentities {
    pub root: Root,
    pub python: crate::IdSet<FileId>,
    /// Identity → indexes into `policy.helpers`.
    pub helpers: crate::IdMap<FileId, Vec<usize>>,
    pub loaders: crate::IdSet<FileId>,
    /// Binaries of the sanctioned kernels (admin-installed kernelspecs) → kernel name.
    pub launchers: crate::IdMap<FileId, String>,
    /// Launcher scripts of the sanctioned kernels, by path in the root → kernel name.
    pub launcher_scripts: std::collections::BTreeMap<PathBuf, String>,
    /// Helpers that are `#!` scripts, by path in the root → indexes into `policy.helpers`.
    pub helper_scripts: std::collections::BTreeMap<PathBuf, Vec<usize>>,
    system: Option<SystemIndex>,
    resolved_at: Instant,
}

impl RootIdentities {
    pub fn resolve(root: Root, policy: &Policy) -> Self {
        // (identity, provenance, path) of every file the globs lead to.
        let find = |patterns: &mut dyn Iterator<Item = &String>| -> Vec<(FileId, Provenance, PathBuf)> {
            let mut out = Vec::new();
            for pat in patterns {
                for p in root.glob(pat) {
                    if let Ok(md) = root.stat(&p) {
                        if md.is_file() {
                            out.push((FileId::of(&md), provenance::of_file(&root, &root.layers, &p, &md), p));
                        }
                    }
                }
            }
            out
        };
        let candidates = find(&mut policy.python.interpreters.iter());
        let mut python: crate::IdSet<FileId> =
            candidates.iter().filter(|(_, p, _)| p.trusted()).map(|(id, ..)| *id).collect();
        // What the notebook's user could have written is Python only as a byte-identical copy
        // of a trusted interpreter (conda's copies and hard links when it makes an env).
        let sealed: Vec<&PathBuf> = candidates.iter().filter(|(_, p, _)| p.trusted()).map(|(.., path)| path).collect();
        let mut refused = Vec::new();
        for (id, _, path) in candidates.iter().filter(|(_, p, _)| !p.trusted()) {
            if python.contains(id) {
                continue;
            }
            if same_content_as_any(&root, path, &sealed) {
                python.insert(*id);
            } else {
                refused.push(path.display().to_string());
            }
        }
        if !refused.is_empty() {
            refused.dedup();
            tracing::info!(
                root = %root.path.display(),
                paths = %refused.join(" "),
                "not trusted as Python: the notebook's user could have written these"
            );
        }
        tracing::debug!(
            root = %root.path.display(),
            overlay = root.layers.is_overlay(),
            candidates = candidates.len(),
            python = python.len(),
            "interpreters resolved"
        );
        let loaders = find(&mut policy.loaders.iter()).into_iter().map(|(id, ..)| id).collect();
        // Helpers by what they are (a name in a class of locations) or by path; either way
        // only files the notebook's user could not have written.
        let envs: Vec<&Path> =
            candidates.iter().filter(|(id, ..)| python.contains(id)).map(|(.., path)| path.as_path()).collect();
        let mut places = super::locations::LocationDirs::of(&root, &envs);
        let mut helpers: crate::IdMap<FileId, Vec<usize>> = Default::default();
        let mut helper_scripts: std::collections::BTreeMap<PathBuf, Vec<usize>> = Default::default();
        let note = |at: &mut Vec<usize>, i: usize| {
            if !at.contains(&i) {
                at.push(i);
            }
        };
        for (i, h) in policy.helpers.iter().enumerate() {
            let named: Vec<String> = places.programs(&root, h).into_iter().map(|p| p.display().to_string()).collect();
            for (id, prov, path) in find(&mut h.paths.iter().chain(named.iter())) {
                if !prov.trusted() {
                    continue;
                }
                note(helpers.entry(id).or_default(), i);
                // A `#!` script (Debian's lsb_release) runs as its interpreter: it is known by
                // its path, where the notebook's user cannot change what the path leads to.
                if root.read(&path, 2).is_ok_and(|b| b == b"#!") {
                    match root.real_path(&path).filter(|real| provenance::sealed_dirs(&root, real)) {
                        Some(real) => {
                            note(helper_scripts.entry(real).or_default(), i);
                            note(helper_scripts.entry(path).or_default(), i);
                        }
                        None => tracing::info!(
                            path = %path.display(),
                            "a helper script in a directory its user may change is not trusted"
                        ),
                    }
                }
            }
        }
        let (mut launchers, mut launcher_scripts) = (crate::IdMap::default(), std::collections::BTreeMap::new());
        for (l, name) in super::kernelspecs::launchers(&root, &sealed, &python) {
            match l {
                super::kernelspecs::Launcher::Binary(id) => {
                    launchers.insert(id, name);
                }
                super::kernelspecs::Launcher::Script(p) => {
                    launcher_scripts.insert(p, name);
                }
            }
        }
        Self {
            root,
            python,
            helpers,
            helper_scripts,
            loaders,
            launchers,
            launcher_scripts,
            system: None,
            resolved_at: Instant::now(),
        }
    }

    fn system(&mut self) -> &SystemIndex {
        if self.system.is_none() {
            self.system = Some(SystemIndex::build(&self.root));
        }
        self.system.as_ref().expect("just built")
    }

    /// Names of the system binary with this identity (`["dash", "sh"]`), if it is one.
    pub fn system_names(&mut self, id: &FileId) -> Option<Arc<[String]>> {
        self.system().names.get(id).cloned()
    }

    /// Identities of the system binaries reachable under one of `names` (shells, say).
    pub fn system_ids_named(&mut self, names: &std::collections::BTreeSet<String>) -> Vec<FileId> {
        let sys = self.system();
        sys.names.iter().filter(|(_, n)| n.iter().any(|n| names.contains(n))).map(|(id, _)| *id).collect()
    }

    /// True when some system binary has exactly this size: only then can a file be a copy of
    /// one, and only then is it worth reading.
    pub fn system_size_exists(&mut self, size: u64) -> bool {
        self.system().by_size.contains_key(&size)
    }

    /// The system binary with the same content as `content`, if any.
    pub fn system_same_content(&mut self, content: &[u8]) -> Option<FileId> {
        self.system();
        let sys = self.system.as_ref()?;
        sys.same_content(&self.root, content)
    }

    pub fn age(&self) -> Duration {
        self.resolved_at.elapsed()
    }
}

/// Largest interpreter compared byte for byte.
const MAX_COMPARED: u64 = 256 << 20;

/// True when the file at `path` has the content of one of `trusted` (sizes first).
fn same_content_as_any(root: &Root, path: &Path, trusted: &[&PathBuf]) -> bool {
    let Ok(size) = root.stat(path).map(|m| m.len()) else { return false };
    let same_size: Vec<&&PathBuf> = trusted.iter().filter(|t| root.stat(t).is_ok_and(|m| m.len() == size)).collect();
    if same_size.is_empty() || size > MAX_COMPARED {
        return false;
    }
    let Ok(content) = root.read(path, size + 1) else { return false };
    let want = Sha256::digest(&content);
    same_size.iter().any(|t| root.read(t, size + 1).is_ok_and(|c| Sha256::digest(&c) == want))
}

/// Identities of every root seen, keyed by root; cgroups map to their root.
#[derive(Default)]
pub struct Identities {
    roots: crate::IdMap<RootKey, RootIdentities>,
    root_of_cgroup: crate::IdMap<u64, RootKey>,
}

/// A new interpreter (conda create, pip install into a venv) is picked up when an unknown
/// binary is seen and the last resolution is older than this.
pub const REFRESH_AFTER: Duration = Duration::from_secs(5);

impl Identities {
    /// The identities of the root that processes of `cgroup_id` see, opening it through the
    /// first of `pids` still alive.
    pub fn for_cgroup(
        &mut self,
        cgroup_id: u64,
        pids: &[u32],
        policy: &Policy,
        proc_root: &Path,
    ) -> Option<(RootKey, &mut RootIdentities)> {
        if let Some(k) = self.root_of_cgroup.get(&cgroup_id).copied() {
            if self.roots.contains_key(&k) {
                return self.roots.get_mut(&k).map(|r| (k, r));
            }
        }
        let (key, root) = pids.iter().find_map(|p| Root::open(&proc_root.join(p.to_string()).join("root")).ok())?;
        self.root_of_cgroup.insert(cgroup_id, key);
        let entry = self.roots.entry(key).or_insert_with(|| RootIdentities::resolve(root, policy));
        Some((key, entry))
    }

    /// Re-resolves one root (policy reload, or an unknown binary after REFRESH_AFTER).
    pub fn refresh(&mut self, key: RootKey, policy: &Policy) -> Option<&mut RootIdentities> {
        let old = self.roots.remove(&key)?;
        let root = old.root.reopen().ok()?;
        self.roots.insert(key, RootIdentities::resolve(root, policy));
        self.roots.get_mut(&key)
    }

    pub fn get_mut(&mut self, key: RootKey) -> Option<&mut RootIdentities> {
        self.roots.get_mut(&key)
    }

    pub fn roots(&self) -> impl Iterator<Item = (&RootKey, &RootIdentities)> {
        self.roots.iter()
    }

    pub fn forget_cgroup(&mut self, cgroup_id: u64) {
        self.root_of_cgroup.remove(&cgroup_id);
    }

    pub fn clear(&mut self) {
        self.roots.clear();
        self.root_of_cgroup.clear();
    }
}

#[cfg(test)]
mod tests;
