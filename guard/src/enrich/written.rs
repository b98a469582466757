//! Executables made during a session (drift): which files a notebook process made
//! executable (chmod, seen as fanotify `FAN_ATTRIB` on a file system mark), and by whom, so an
//! exec of one names its writer's lineage — `pip install` writing a console script apart from
//! a kernel that downloaded a binary and chmodded it.
//!
//! The marks are on the file systems where a notebook's files change: its container's upper
//! layer (overlayfs itself refuses file system marks; its writes reach the layer below) and
//! its home volume. Changes by processes outside notebooks are dropped by the caller.

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsString,
    os::{fd::OwnedFd, unix::fs::PermissionsExt},
    path::Path,
    time::Instant,
};

use crate::{
    policy::root::Root,
    process::table::ProcInfo,
    sensors::files::{dir_key, open_dir_by_key, DirKey, FileEvent, FileSensor},
};

/// Files remembered, the oldest forgotten first.
const KEPT: usize = 4096;

/// Who made a file executable.
#[derive(Clone, Debug)]
pub struct Made {
    /// The writer first, then its ancestors.
    pub chain: Vec<ProcInfo>,
    pub at: Instant,
}

pub struct Written {
    /// A fanotify group of its own: a flood of metadata changes elsewhere on a marked file
    /// system (an image unpacked on the node's disk) overflows this queue, not the one of
    /// persistence writes.
    sensor: FileSensor,
    /// File systems marked, each with a directory on it (to reopen the directories events
    /// name).
    filesystems: HashMap<[i32; 2], OwnedFd>,
    made: HashMap<(DirKey, OsString), Made>,
    order: VecDeque<(DirKey, OsString)>,
}

impl Written {
    pub fn new(sensor: FileSensor) -> Self {
        Self { sensor, filesystems: HashMap::new(), made: HashMap::new(), order: VecDeque::new() }
    }

    pub fn sensor(&self) -> &FileSensor {
        &self.sensor
    }

    /// Marks the file system directory `dir` is on, once.
    pub fn watch_filesystem(&mut self, dir: OwnedFd, what: &str) {
        match dir_key(&dir) {
            Ok(k) if self.filesystems.contains_key(&k.fsid) => return,
            Err(e) => return tracing::debug!(what, error = %e, "no file handle for a drift file system"),
            Ok(_) => {}
        }
        match self.sensor.mark_filesystem(&dir) {
            Ok(fsid) => {
                tracing::debug!(what, ?fsid, "watching a file system for executables made");
                self.filesystems.insert(fsid, dir);
            }
            // overlayfs (a home without a volume of its own): the upper layer's mark covers it.
            Err(e) => tracing::debug!(what, error = %e, "cannot watch a file system for executables made"),
        }
    }

    /// A metadata change by a notebook process (`chain`: the writer first): remembered when
    /// it left a regular file executable.
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
        let key = (ev.dir.clone(), ev.name.clone());
        tracing::debug!(name = ?ev.name, writer = ?chain.first().map(|p| p.pid), "executable made");
        if self.made.insert(key.clone(), Made { chain, at: now }).is_none() {
            self.order.push_back(key);
            if self.order.len() > KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.made.remove(&old);
                }
            }
        }
    }

    /// Who made the file at `real` (inside `root`, symlinks resolved) executable during the
    /// session, if a notebook process did.
    pub fn made(&self, root: &Root, real: &Path) -> Option<Made> {
        if self.made.is_empty() {
            return None;
        }
        let (parent, name) = (real.parent()?, real.file_name()?);
        // In a container, what changed is in its upper layer: the directory events name.
        let dir = match root.layers.upper_path(real) {
            Some(up) => std::fs::File::open(up.parent()?).ok().map(OwnedFd::from)?,
            None => root.open_dir(parent).ok()?,
        };
        let key = (dir_key(&dir).ok()?, name.to_os_string());
        self.made.get(&key).cloned()
    }
}
