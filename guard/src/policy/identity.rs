//! Policy paths → file identities, per root filesystem.
//!
//! "Python" is the set of files the configured interpreter paths lead to *inside each
//! notebook's own root*. Paths are resolved with openat2(RESOLVE_IN_ROOT) below
//! `/proc/PID/root`, so a container's absolute symlinks resolve in the container, never on the
//! host. Identities are (device, inode): a copy or rename of a binary never matches.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            fs::MetadataExt,
        },
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use super::{
    provenance::{self, Layers, Provenance},
    Policy,
};
use crate::sensors::decode::FileId;

/// Directories whose binaries are "system binaries" (masquerade and name lookups).
pub const SYSTEM_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A root filesystem, by the identity of its `/`.
pub type RootKey = FileId;

/// Opens `rel` (absolute inside the root) below `root_fd` without escaping it; follows
/// symlinks as the container would.
pub fn open_in_root(root_fd: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    open_in_root_as(root_fd, rel, libc::O_PATH)
}

/// As [`open_in_root`], opened with `flags` (an `O_PATH` handle, or a directory to list).
fn open_in_root_as(root_fd: &OwnedFd, rel: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(rel.as_os_str().as_bytes())?;
    /// `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid fd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The target of the symlink `fd` (an `O_PATH | O_NOFOLLOW` handle) is.
fn readlink_fd(fd: &OwnedFd) -> Option<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty path with a symlink's O_PATH fd reads that link (readlinkat(2)); the
    // buffer is as long as we say.
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 || n as usize >= buf.len() {
        return None;
    }
    buf.truncate(n as usize);
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

fn fstat(fd: &OwnedFd) -> std::io::Result<fs::Metadata> {
    // statx(fd, "", AT_EMPTY_PATH), which O_PATH fds allow, through a File that never closes
    // the borrowed fd. Going by /proc/self/fd/N instead cost a path walk per file, thousands
    // of them when a root's system binaries are indexed.
    // SAFETY: the fd stays open for the borrow; ManuallyDrop keeps the File from closing it.
    let f = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(fd.as_raw_fd()) });
    f.metadata()
}

pub struct Root {
    pub path: PathBuf,
    fd: OwnedFd,
    /// The container's writable layer, for an overlay root.
    pub layers: Layers,
    /// The mount namespace whose root this is (`/proc/PID/ns/mnt`), where paths are resolved.
    pub mnt_ns: Option<u32>,
}

impl Root {
    pub fn open(path: &Path) -> std::io::Result<(RootKey, Self)> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: valid C string; fd owned right away.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The root's directory changes whenever an entry of `/` does: it is known by its inode.
        let key = FileId::of(&fstat(&fd)?).file();
        // `/proc/PID/root`: that process's mounts say whether the root is an overlay.
        let (layers, mnt_ns) = match (path.file_name(), path.parent()) {
            (Some(n), Some(pid_dir)) if n == "root" => match (pid_dir.file_name(), pid_dir.parent()) {
                (Some(pid), Some(proc_root)) => {
                    let ns = fs::read_link(pid_dir.join("ns/mnt")).ok().and_then(|l| {
                        let l = l.to_string_lossy().into_owned();
                        l.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
                    });
                    (Layers::of_process(proc_root, &pid.to_string_lossy()), ns)
                }
                _ => (Layers::default(), None),
            },
            _ => (Layers::default(), None),
        };
        Ok((key, Self { path: path.to_path_buf(), fd, layers, mnt_ns }))
    }

    /// The same root, opened afresh through this one (its `path` may be gone by now).
    pub fn reopen(&self) -> std::io::Result<Self> {
        let (_, mut root) = Self::open(&self.base())?;
        root.path = self.path.clone();
        root.layers = self.layers.clone();
        root.mnt_ns = self.mnt_ns;
        Ok(root)
    }

    /// `rel` with every symlink on the way resolved inside the root, as the container sees
    /// it (None when it does not resolve, or loops).
    pub fn real_path(&self, rel: &Path) -> Option<PathBuf> {
        let mut todo: Vec<PathBuf> = rel.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
        let mut out = PathBuf::from("/");
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == Path::new("/") || c == Path::new(".") {
                continue;
            }
            if c == Path::new("..") {
                out.pop();
                continue;
            }
            let next = out.join(&c);
            let fd = open_in_root_as(&self.fd, &next, libc::O_PATH | libc::O_NOFOLLOW).ok()?;
            if !fstat(&fd).ok()?.file_type().is_symlink() {
                out = next;
                continue;
            }
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = readlink_fd(&fd)?;
            if target.is_absolute() {
                out = PathBuf::from("/");
            }
            todo.extend(target.components().rev().map(|c| PathBuf::from(c.as_os_str())));
        }
        Some(provenance::normalize(&out))
    }

    /// Metadata of `rel` inside the root (symlinks followed inside the root).
    pub fn stat(&self, rel: &Path) -> std::io::Result<fs::Metadata> {
        fstat(&open_in_root(&self.fd, rel)?)
    }

    /// The root as a path that stays valid while this is open. `path` is usually
    /// `/proc/<pid>/root`, gone the moment that process exits, which may be halfway through
    /// resolving a short-lived process's root (an identity set half-resolved, and kept).
    fn base(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The identity and entries of directory `rel`, resolved inside the root. The entries'
    /// `metadata()` is an fstatat against the listed directory (symlinks not followed): no
    /// path walk per entry.
    pub fn list(&self, rel: &Path) -> std::io::Result<(FileId, fs::ReadDir)> {
        let dir = open_in_root_as(&self.fd, rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let id = FileId::of(&fstat(&dir)?).file();
        // The magic link reopens that very directory; nothing is resolved again.
        Ok((id, fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?))
    }

    /// Paths (inside the root) that may match an absolute glob: its literal components are
    /// taken as they are, its wildcard ones matched against listings made inside the root.
    /// Callers stat what they get (a literal path need not exist). A glob walked through
    /// the host's view of `/proc/PID/root` instead followed a container's absolute symlinks
    /// out to the host, and stat'ed every entry of each directory it listed.
    pub fn glob(&self, pattern: &str) -> Vec<PathBuf> {
        let mut found = vec![PathBuf::from("/")];
        for part in pattern.split('/').filter(|c| !c.is_empty()) {
            if !part.contains(['*', '?', '[']) {
                found.iter_mut().for_each(|p| p.push(part));
                continue;
            }
            let Ok(pat) = glob::Pattern::new(part) else { return vec![] };
            let mut next = Vec::new();
            for dir in &found {
                let Ok((_, entries)) = self.list(dir) else { continue };
                let mut names: Vec<_> = entries
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n.to_str().is_some_and(|n| pat.matches(n)))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| dir.join(n)));
            }
            found = next;
        }
        found
    }

    pub fn read(&self, rel: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
        let fd = open_in_root(&self.fd, rel)?;
        let mut f = fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let mut buf = Vec::new();
        (&mut f).take(limit).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

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
mod tests {
    use super::*;

    #[test]
    fn resolves_interpreters_through_symlinks_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("guard-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("usr/bin")).unwrap();
        fs::create_dir_all(dir.join("opt/conda/bin")).unwrap();
        fs::copy("/bin/true", dir.join("usr/bin/python3.12")).unwrap();
        // An absolute symlink: must resolve inside the root, not on the host.
        std::os::unix::fs::symlink("/usr/bin/python3.12", dir.join("usr/bin/python3")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3.12", dir.join("opt/conda/bin/python3")).unwrap();
        fs::copy("/bin/true", dir.join("usr/bin/bash")).unwrap();
        let (_, root) = Root::open(&dir).unwrap();
        let ids = RootIdentities::resolve(root, &Policy::default_policy());
        let py = FileId::of(&fs::metadata(dir.join("usr/bin/python3.12")).unwrap());
        assert_eq!(ids.python, crate::IdSet::from_iter([py]));
        let bash = FileId::of(&fs::metadata(dir.join("usr/bin/bash")).unwrap());
        assert!(!ids.python.contains(&bash));
        let mut ids = ids;
        let content = fs::read(dir.join("usr/bin/bash")).unwrap();
        // Both files are copies of /bin/true: content lookup finds one of them.
        assert!(ids.system_same_content(&content).is_some());
        assert!(ids.system_names(&py).unwrap().contains(&"python3".to_string()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn globs_follow_a_containers_absolute_symlinks_inside_it() {
        // conda images often link /opt/conda to an absolute path; on the host that path is
        // somewhere else, or nowhere.
        let dir = std::env::temp_dir().join(format!("guard-root-glob-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let inside = format!("/nbg-test-conda-{}", std::process::id());
        assert!(!Path::new(&inside).exists());
        fs::create_dir_all(dir.join(&inside[1..]).join("bin")).unwrap();
        fs::create_dir_all(dir.join("opt")).unwrap();
        std::os::unix::fs::symlink(&inside, dir.join("opt/conda")).unwrap();
        for name in ["python3.11", "python3", "pip"] {
            fs::copy("/bin/true", dir.join(&inside[1..]).join("bin").join(name)).unwrap();
        }
        let (_, root) = Root::open(&dir).unwrap();
        assert_eq!(
            root.glob("/opt/conda/bin/python3*"),
            vec![PathBuf::from("/opt/conda/bin/python3"), PathBuf::from("/opt/conda/bin/python3.11")]
        );
        // Literal components are kept as they are; wildcard ones only match what exists.
        assert_eq!(root.glob("/opt/conda/envs/*/bin/python3*"), Vec::<PathBuf>::new());
        assert_eq!(root.glob("/usr/bin/uname"), vec![PathBuf::from("/usr/bin/uname")]);
        let ids = RootIdentities::resolve(root, &Policy::default_policy());
        let py = FileId::of(&fs::metadata(dir.join(&inside[1..]).join("bin/python3.11")).unwrap());
        assert!(ids.python.contains(&py));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_merged_usr_is_indexed_once() {
        let dir = std::env::temp_dir().join(format!("guard-root-merged-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
        fs::copy("/bin/true", dir.join("usr/bin/dash")).unwrap();
        std::os::unix::fs::symlink("dash", dir.join("usr/bin/sh")).unwrap();
        let (_, root) = Root::open(&dir).unwrap();
        let mut ids = RootIdentities::resolve(root, &Policy::default_policy());
        let dash = FileId::of(&fs::metadata(dir.join("usr/bin/dash")).unwrap());
        let names = ids.system_names(&dash).unwrap();
        assert_eq!(names.len(), 2, "dash and sh, each once: {names:?}");
        let copies: usize = ids.system().by_size.values().map(Vec::len).sum();
        assert_eq!(copies, 1, "/usr/bin/dash, not again as /bin/dash");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_root_whose_path_went_away_still_resolves() {
        // The path is usually /proc/<pid>/root: it stops resolving when that process exits,
        // possibly between opening the root and resolving it.
        let dir = std::env::temp_dir().join(format!("guard-root-gone-{}", std::process::id()));
        let moved = dir.with_extension("moved");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&moved);
        fs::create_dir_all(dir.join("usr/bin")).unwrap();
        fs::copy("/bin/true", dir.join("usr/bin/python3.12")).unwrap();
        let (_, root) = Root::open(&dir).unwrap();
        fs::rename(&dir, &moved).unwrap();
        let mut ids = RootIdentities::resolve(root, &Policy::default_policy());
        let py = FileId::of(&fs::metadata(moved.join("usr/bin/python3.12")).unwrap());
        assert_eq!(ids.python, crate::IdSet::from_iter([py]));
        assert!(ids.system_names(&py).is_some(), "the system index is built through the open root too");
        fs::remove_dir_all(&moved).unwrap();
    }

    #[test]
    fn a_refresh_after_the_first_process_exited_sees_new_interpreters() -> std::io::Result<()> {
        // A root is first opened through /proc/<pid>/root of whatever process exec'd first;
        // by the time a new env's Python shows up, that process has long exited.
        let tmp = std::env::temp_dir().join(format!("guard-refresh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let root_dir = tmp.join("proc/42/root");
        fs::create_dir_all(root_dir.join("usr/bin"))?;
        fs::copy("/bin/true", root_dir.join("usr/bin/python3.12"))?;
        let policy = Policy::default_policy();
        let mut ids = Identities::default();
        let (key, _) = ids.for_cgroup(7, &[42], &policy, &tmp.join("proc")).expect("root opened");
        let kept = tmp.join("kept-root");
        fs::rename(&root_dir, &kept)?;
        fs::copy("/bin/true", kept.join("usr/bin/python3.13"))?;
        let fresh = ids.refresh(key, &policy).expect("refreshed through the open root");
        let new = FileId::of(&fs::metadata(kept.join("usr/bin/python3.13"))?);
        assert!(fresh.python.contains(&new), "the new interpreter is known after the refresh");
        fs::remove_dir_all(&tmp)
    }
}
