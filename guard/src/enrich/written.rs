//! Executables made during a session (drift): which files a notebook process left
//! executable, and by whom, so an exec of one names its writer's lineage — `pip install`
//! writing a console script apart from a kernel that downloaded a binary and chmodded it.
//!
//! Two sources, the cheap one wherever it sees enough:
//! - the kernel hook (`written.rs` there): every change to an executable regular file by a
//!   notebook process, known by device and inode. It sees a chmod only where the file system
//!   marks the inode dirty for it (ext4); elsewhere (xfs, btrfs, tmpfs) it sees files made
//!   executable and executables written, not a chmod of a file written earlier.
//! - fanotify `FAN_ATTRIB` and `FAN_CREATE` on a file system mark, for the file systems the
//!   hook leaves short (all of them without the hook; tmpfs marks no inode dirty for a file
//!   created and written at once). Its price: every metadata change and file made on that
//!   file system, node-wide (a chmod, a link or unlink, a utime), queues an event, about a
//!   microsecond each.
//!
//! The marks are on the file systems where a notebook's files change: its container's upper
//! layer (overlayfs itself refuses file system marks; its writes reach the layer below) and
//! its home volume. Changes by processes outside notebooks are dropped by the caller.

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsString,
    hash::Hash,
    os::{fd::OwnedFd, unix::fs::PermissionsExt},
    path::Path,
    time::Instant,
};

use crate::{
    policy::root::Root,
    process::table::ProcInfo,
    sensors::{
        decode::FileId,
        files::{dir_key, open_dir_by_key, DirKey, FileEvent, FileSensor},
    },
};

/// Files remembered per source, the oldest forgotten first.
const KEPT: usize = 4096;

/// Who made a file executable.
#[derive(Clone, Debug)]
pub struct Made {
    /// The writer first, then its ancestors.
    pub chain: Vec<ProcInfo>,
    pub at: Instant,
}

/// Writers by file, the oldest forgotten first.
struct Kept<K> {
    made: HashMap<K, Made>,
    order: VecDeque<K>,
}

impl<K: Clone + Eq + Hash> Kept<K> {
    fn new() -> Self {
        Self { made: HashMap::new(), order: VecDeque::new() }
    }

    fn insert(&mut self, key: K, made: Made) {
        if self.made.insert(key.clone(), made).is_none() {
            self.order.push_back(key);
            if self.order.len() > KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.made.remove(&old);
                }
            }
        }
    }
}

pub struct Written {
    /// The kernel hook reports changes through the ring.
    hook: bool,
    /// A fanotify group of its own: a flood of metadata changes elsewhere on a marked file
    /// system (an image unpacked on the node's disk) overflows this queue, not the one of
    /// persistence writes. None when the kernel gave no second group.
    sensor: Option<FileSensor>,
    /// File systems marked, each with a directory on it (to reopen the directories events
    /// name).
    filesystems: HashMap<[i32; 2], OwnedFd>,
    by_name: Kept<(DirKey, OsString)>,
    /// Keyed by file alone (`FileId::file`): a later change keeps its writer's record.
    by_inode: Kept<FileId>,
}

impl Written {
    pub fn new(sensor: Option<FileSensor>, hook: bool) -> Self {
        Self { hook, sensor, filesystems: HashMap::new(), by_name: Kept::new(), by_inode: Kept::new() }
    }

    pub fn sensor(&self) -> Option<&FileSensor> {
        self.sensor.as_ref()
    }

    /// Marks the file system directory `dir` is on, once, unless the hook sees its chmods.
    pub fn watch_filesystem(&mut self, dir: OwnedFd, what: &str) {
        // ext4 marks an inode dirty on chmod: there the hook sees chmods too.
        let ext4 =
            nix::sys::statfs::fstatfs(&dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC);
        if self.hook && ext4 {
            return tracing::debug!(what, "executables made on this file system are seen by the kernel hook");
        }
        match dir_key(&dir) {
            Ok(k) if self.filesystems.contains_key(&k.fsid) => return,
            Err(e) => return tracing::debug!(what, error = %e, "no file handle for a drift file system"),
            Ok(_) => {}
        }
        let Some(sensor) = &self.sensor else {
            return tracing::debug!(what, "no fanotify group for executables made on this file system");
        };
        match sensor.mark_filesystem(&dir) {
            Ok(fsid) => {
                tracing::debug!(what, ?fsid, "watching a file system for executables made");
                self.filesystems.insert(fsid, dir);
            }
            // overlayfs (a home without a volume of its own): the upper layer's mark covers it.
            Err(e) => tracing::debug!(what, error = %e, "cannot watch a file system for executables made"),
        }
    }

    /// The hook's report: notebook process `chain[0]` changed executable `file`.
    pub fn on_written(&mut self, file: FileId, chain: Vec<ProcInfo>, now: Instant) {
        tracing::debug!(?file, writer = ?chain.first().map(|p| p.pid), "executable written");
        self.by_inode.insert(file.file(), Made { chain, at: now });
    }

    /// A metadata change or a file made by a notebook process (`chain`: the writer first):
    /// remembered when it left a regular file executable.
    pub fn on_attrib(&mut self, ev: &FileEvent, chain: Vec<ProcInfo>, now: Instant) {
        let Some(mount) = self.filesystems.get(&ev.dir.fsid) else { return };
        let Ok(dir) = open_dir_by_key(mount, &ev.dir) else { return };
        let Ok(meta) = nix::sys::stat::fstatat(&dir, ev.name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            return;
        };
        let mode = std::fs::Permissions::from_mode(meta.st_mode).mode();
        let regular = meta.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !regular || mode & 0o111 == 0 {
            return;
        }
        tracing::debug!(name = ?ev.name, writer = ?chain.first().map(|p| p.pid), "executable made");
        self.by_name.insert((ev.dir.clone(), ev.name.clone()), Made { chain, at: now });
    }

    /// Who made the file at `real` (inside `root`, symlinks resolved) executable during the
    /// session, if a notebook process did. fanotify's word first: it watches only file
    /// systems whose chmods the hook misses, and there the first read after such a chmod (an
    /// exec's atime update) looks to the hook like a change by the reader.
    pub fn made(&self, root: &Root, real: &Path) -> Option<Made> {
        // In a container, what changed is in its upper layer: the directory fanotify names
        // and the file the hook saw.
        let upper = root.layers.upper_path(real);
        if !self.by_name.made.is_empty() {
            let (parent, name) = (real.parent()?, real.file_name()?);
            let dir = match &upper {
                Some(up) => std::fs::File::open(up.parent()?).ok().map(OwnedFd::from),
                None => root.open_dir(parent).ok(),
            };
            let key = dir.and_then(|d| dir_key(&d).ok()).map(|k| (k, name.to_os_string()));
            if let Some(m) = key.and_then(|k| self.by_name.made.get(&k).cloned()) {
                return Some(m);
            }
        }
        if self.by_inode.made.is_empty() {
            return None;
        }
        let meta = match &upper {
            Some(up) => std::fs::metadata(up).ok(),
            None => root.stat(real).ok(),
        }?;
        self.by_inode.made.get(&FileId::of(&meta).file()).cloned()
    }
}
