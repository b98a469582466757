//! cgroup v2: find its mount, and map a cgroup id (what the kernel reports) back to a path.
//!
//! The mount differs between hosts: `/sys/fs/cgroup` on unified nodes, `/sys/fs/cgroup/unified`
//! on hybrid ones, anything in a container. It is discovered from mountinfo, never assumed.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// The cgroup2 mount point named in mountinfo text (`/proc/self/mountinfo` format).
pub fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mountpoint = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mountpoint)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount of this mount namespace.
pub fn find_cgroup2_mount() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_mountinfo(&text).context("no cgroup2 filesystem is mounted (cgroup v2 is required)")
}

/// The directory of cgroup `rel` (a path relative to the cgroup2 root, as the resolver gives
/// it: `/kubepods.slice/…`) on the mount at `mount`.
pub fn on_mount(mount: &Path, rel: &Path) -> PathBuf {
    mount.join(rel.strip_prefix("/").unwrap_or(rel))
}

/// A cgroup's id: the inode number of its directory (the kernfs node id on 64-bit kernels).
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.ino())
}

/// Maps cgroup ids to paths relative to the cgroup2 root (e.g. `/kubepods.slice/…`).
pub struct CgroupResolver {
    mount: PathBuf,
    mount_fd: OwnedFd,
    cache: crate::IdMap<u64, Option<PathBuf>>,
}

/// `struct file_handle` with the 8-byte kernfs payload.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}
/// FILEID_KERNFS from include/linux/exportfs.h.
const FILEID_KERNFS: i32 = 0xfe;
const CACHE_MAX: usize = 65536;

impl CgroupResolver {
    pub fn new(mount: PathBuf) -> Result<Self> {
        let c = CString::new(mount.as_os_str().as_bytes())?;
        // SAFETY: valid C string; the fd is owned right away.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("opening {}", mount.display()));
        }
        // SAFETY: fd was just returned by open and is not owned elsewhere.
        let mount_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { mount, mount_fd, cache: Default::default() })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The path of cgroup `id` relative to the cgroup2 root ("/" for the root), or None once
    /// the cgroup is gone. cgroup ids are kernfs file handles, so one `open_by_handle_at`
    /// finds the directory without walking the tree.
    pub fn resolve(&mut self, id: u64) -> Option<PathBuf> {
        if let Some(hit) = self.cache.get(&id) {
            return hit.clone();
        }
        let found = self.lookup(id);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        // A vanished cgroup is not cached: ids are never reused while the cache lives, but a
        // failure may be transient (EMFILE), so only successes are kept.
        if found.is_some() {
            self.cache.insert(id, found.clone());
        }
        found
    }

    /// As `resolve`, asking the kernel every time.
    pub fn lookup(&self, id: u64) -> Option<PathBuf> {
        let handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        // SAFETY: the handle is a valid struct file_handle of 8 payload bytes.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.mount_fd.as_raw_fd(),
                &handle as *const KernfsHandle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_PATH,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd from the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let full = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = full.strip_prefix(&self.mount).ok()?;
        Some(Path::new("/").join(rel))
    }

    /// True while cgroup `id` exists (asked of the kernel, not the cache).
    pub fn exists(&self, id: u64) -> bool {
        self.lookup(id).is_some()
    }

    /// The path of cgroup `id`, as the kernel reported it when the cgroup was made.
    pub fn learn(&mut self, id: u64, path: PathBuf) {
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(id, Some(path));
    }

    /// Invalidates a cached id (cgroup removed).
    pub fn forget(&mut self, id: u64) {
        self.cache.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      36 25 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n";
        assert_eq!(parse_mountinfo(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let spaced = "30 23 0:26 / /mnt/cg\\040v2 rw - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(spaced), Some(PathBuf::from("/mnt/cg v2")));
        assert_eq!(parse_mountinfo("30 23 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }
}
