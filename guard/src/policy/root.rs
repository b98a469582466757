//! A notebook's root filesystem, opened once and walked from inside: paths resolve with
//! openat2(RESOLVE_IN_ROOT) below `/proc/PID/root`, so a container's absolute symlinks resolve
//! in the container, never on the host; globs list directories there too.

use std::{
    ffi::CString,
    fs,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
};

use super::{
    identity::RootKey,
    provenance::{self, Layers},
};
use crate::sensors::decode::FileId;

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
            let Ok(pat) = globset::Glob::new(part).map(|g| g.compile_matcher()) else { return vec![] };
            let mut next = Vec::new();
            for dir in &found {
                let Ok((_, entries)) = self.list(dir) else { continue };
                let mut names: Vec<_> = entries
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n.to_str().is_some_and(|n| pat.is_match(n)))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| dir.join(n)));
            }
            found = next;
        }
        found
    }

    /// Directory `rel`, opened for reading (what a fanotify mark needs), resolved inside the
    /// root; symlinks on the way are followed as the container would.
    pub fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        open_in_root_as(&self.fd, rel, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Metadata of `rel` itself (a symlink is not followed), and for a symlink its target.
    pub fn lstat(&self, rel: &Path) -> std::io::Result<(fs::Metadata, Option<PathBuf>)> {
        let fd = open_in_root_as(&self.fd, rel, libc::O_PATH | libc::O_NOFOLLOW)?;
        let m = fstat(&fd)?;
        let target = m.file_type().is_symlink().then(|| readlink_fd(&fd)).flatten();
        Ok((m, target))
    }

    pub fn read(&self, rel: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
        let fd = open_in_root(&self.fd, rel)?;
        let mut f = fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let mut buf = Vec::new();
        (&mut f).take(limit).read_to_end(&mut buf)?;
        Ok(buf)
    }
}
