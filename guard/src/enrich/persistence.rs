//! Persistence locations, per notebook: which directories of its root the file sensor
//! watches (the policy's location tree walked in that root, from its home and Python
//! environments), and what a name written in one of them is.
//!
//! A directory on the way to locations that appears later (`mkdir -p ~/.ipython/…`) is
//! watched when its parent reports it; what was written into it before the mark took is
//! found by listing it then, and credited to the process that made the directory.

use std::{
    collections::{HashMap, HashSet},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    discovery::attribution::Attribution,
    policy::{
        identity::RootKey,
        persistence::{Anchor, NodeId, Tree},
        root::Root,
    },
    sensors::files::{DirKey, FileEvent, FileSensor, FAN_CLOSE_WRITE, FAN_CREATE, FAN_MOVED_TO, FAN_ONDIR},
};

/// Directories watched per notebook root at most (globs over large directories).
const MAX_MARKS_PER_ROOT: usize = 512;
/// One write reports create and close-write, maybe apart: one alert per name in this time.
const SAME_WRITE: Duration = Duration::from_secs(2);
const DEPTH: usize = 16;

/// A location written in a notebook.
#[derive(Clone, Debug)]
pub struct Planted {
    pub who: Arc<Attribution>,
    /// The path inside the notebook's root.
    pub path: PathBuf,
    pub kind: String,
    /// `create`, `write`, `rename`, `symlink`, or `found` (in a directory that appeared with it).
    pub op: &'static str,
    /// Where a symlink put in place points.
    pub target: Option<PathBuf>,
    /// The writer (for `found`, the process that made the directory), when visible.
    pub pid: Option<u32>,
}

struct Watched {
    who: Arc<Attribution>,
    root: Root,
    key: RootKey,
}

#[derive(Clone)]
struct Marked {
    nb: Arc<Watched>,
    path: PathBuf,
    node: NodeId,
}

pub struct Watcher {
    /// Executables made during sessions (drift); None without the kernel hook and without a
    /// second fanotify group.
    pub written: Option<super::written::Written>,
    tree: Tree,
    sensor: FileSensor,
    marked: HashMap<DirKey, Marked>,
    /// (root, anchor directory) pairs walked already.
    walked: HashSet<(RootKey, PathBuf)>,
    marks_per_root: HashMap<RootKey, usize>,
    recent: HashMap<(DirKey, Vec<u8>), Instant>,
    said_unsupported: bool,
}

impl Watcher {
    /// `hook`: the kernel reports executables written (drift) through the ring.
    pub fn new(tree: Tree, sensor: FileSensor, drift: Option<FileSensor>, hook: bool) -> Self {
        Self {
            written: (drift.is_some() || hook).then(|| super::written::Written::new(drift, hook)),
            tree,
            sensor,
            marked: HashMap::new(),
            walked: HashSet::new(),
            marks_per_root: HashMap::new(),
            recent: HashMap::new(),
            said_unsupported: false,
        }
    }

    /// The persistence group.
    pub fn sensor(&self) -> &FileSensor {
        &self.sensor
    }

    /// The fanotify groups: persistence writes, and metadata changes (drift).
    pub fn sensors(&self) -> impl Iterator<Item = &FileSensor> {
        std::iter::once(&self.sensor).chain(self.written.as_ref().and_then(|w| w.sensor()))
    }

    /// A new policy's locations: what is watched is walked again.
    pub fn set_tree(&mut self, tree: Tree) {
        self.tree = tree;
        // Node ids are the old tree's: every directory is registered again by the next walk
        // (its kernel mark stays; a directory no longer on the way reports names nobody reads).
        self.marked.clear();
        self.walked.clear();
        self.marks_per_root.clear();
    }

    /// Watches the locations of the notebook `pid` serves: its root, home (`HOME` in
    /// `environ`) and the Python environment of `exe` (a path inside the root). Cheap when
    /// these were walked already.
    /// `scratch`: other places its user writes to (`writable_paths`), watched for drift.
    pub fn watch(
        &mut self,
        proc_root: &Path,
        pid: u32,
        environ: &[u8],
        exe: Option<&Path>,
        who: &Arc<Attribution>,
        scratch: &[String],
    ) {
        let home = crate::discovery::attribution::env_var(environ, "HOME").filter(|h| h.starts_with('/'));
        // An environment's prefix: the interpreter ran from its `bin`.
        let env =
            exe.and_then(Path::parent).filter(|b| b.ends_with("bin")).and_then(Path::parent).map(Path::to_path_buf);
        let Ok((key, root)) = Root::open(&proc_root.join(pid.to_string()).join("root")) else { return };
        let starts: Vec<(NodeId, PathBuf)> = self
            .tree
            .anchors()
            .iter()
            .filter_map(|&(a, node)| {
                let dir = match a {
                    Anchor::Home => PathBuf::from(home.as_ref()?),
                    Anchor::Env => env.clone()?,
                    Anchor::Root => PathBuf::from("/"),
                };
                Some((node, dir))
            })
            .filter(|(_, dir)| !self.walked.contains(&(key, dir.clone())))
            .collect();
        if starts.is_empty() {
            return;
        }
        // Drift: the file systems where this notebook's files change.
        if let Some(written) = self.written.as_mut() {
            if let Some(f) = root.layers.upper_dir().and_then(|up| std::fs::File::open(up).ok()) {
                written.watch_filesystem(f.into(), "upper layer");
            }
            for place in home.iter().chain(scratch) {
                if let Ok(dir) = root.open_dir(Path::new(place)) {
                    written.watch_filesystem(dir, place);
                }
            }
        }
        let nb = Arc::new(Watched { who: who.clone(), root, key });
        for (node, dir) in starts {
            self.walked.insert((key, dir.clone()));
            let mut found = Vec::new();
            self.walk(&nb, dir, node, 0, None, &mut found);
        }
    }

    /// Marks directory `path` (at tree `node`) and what is below it on the way to locations.
    /// With `found_by`, location files already there are reported (a directory that appeared).
    fn walk(
        &mut self,
        nb: &Arc<Watched>,
        path: PathBuf,
        node: NodeId,
        depth: usize,
        found_by: Option<Option<u32>>,
        found: &mut Vec<Planted>,
    ) {
        let count = self.marks_per_root.entry(nb.key).or_default();
        if depth > DEPTH || *count >= MAX_MARKS_PER_ROOT {
            return;
        }
        let Ok(dir) = nb.root.open_dir(&path) else { return };
        match self.sensor.mark(&dir) {
            Ok(key) => {
                *count += 1;
                self.marked.insert(key, Marked { nb: nb.clone(), path: path.clone(), node });
            }
            Err(e) => {
                // overlayfs before Linux 6.6 cannot report names by file handle: said once.
                let unsupported =
                    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::ENODEV));
                if unsupported && !self.said_unsupported {
                    self.said_unsupported = true;
                    tracing::warn!(path = %path.display(), error = %e, "persistence locations on this file system are not watched (a container's overlayfs root needs Linux 6.6 or later; home volumes are watched)");
                } else {
                    tracing::debug!(path = %path.display(), error = %e, "cannot watch a persistence directory");
                }
                return;
            }
        }
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir))) else {
            return;
        };
        let mut below = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let m = self.tree.name(node, &name.to_string_lossy());
            let child = path.join(&name);
            let is_dir = nb.root.stat(&child).is_ok_and(|m| m.is_dir());
            if is_dir {
                below.extend(m.dirs.into_iter().map(|d| (child.clone(), d)));
            } else if let Some(kind) = m.kind {
                self.mark_file(&dir, &name);
                if let Some(pid) = found_by {
                    found.push(Planted { who: nb.who.clone(), path: child, kind, op: "found", target: None, pid });
                }
            }
        }
        for (child, d) in below {
            self.walk(nb, child, d, depth + 1, found_by, found);
        }
    }

    /// Writes to location file `name` in `dir` are reported: a mark on the file itself, so
    /// that writes to the other files of its directory (a home's data files) cost nothing.
    fn mark_file(&self, dir: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) {
        if let Err(e) = self.sensor.mark_file(dir, name) {
            tracing::debug!(name = ?name, error = %e, "cannot watch a persistence file");
        }
    }

    /// Whether an event may mean anything: a name in a watched directory that is a location
    /// or on the way to one. A home's mark reports every file made there (a notebook saved,
    /// a scratch file); the rest of them are dropped on this, before any look at the writer.
    pub fn concerns(&self, ev: &FileEvent) -> bool {
        self.marked.get(&ev.dir).is_some_and(|m| {
            let nm = self.tree.name(m.node, &ev.name.to_string_lossy());
            nm.kind.is_some() || !nm.dirs.is_empty()
        })
    }

    /// What one event means: location files planted, and directories on the way to
    /// locations watched as they appear.
    pub fn on_event(&mut self, ev: &FileEvent, now: Instant) -> Vec<Planted> {
        let Some(m) = self.marked.get(&ev.dir).cloned() else { return vec![] };
        let name = ev.name.to_string_lossy();
        let nm = self.tree.name(m.node, &name);
        if nm.kind.is_none() && nm.dirs.is_empty() {
            return vec![];
        }
        let path = m.path.join(&ev.name);
        let mut out = Vec::new();
        let appeared = ev.mask & (FAN_CREATE | FAN_MOVED_TO) != 0;
        if ev.mask & FAN_ONDIR != 0 {
            if appeared {
                for d in nm.dirs {
                    self.walk(&m.nb, path.clone(), d, 0, Some(ev.pid), &mut out);
                }
            }
            return self.fresh(out, &ev.dir, now);
        }
        // Gone already (written and renamed away): reported as what the event says.
        let (is_link, target) = match m.nb.root.lstat(&path) {
            Ok((meta, target)) => (meta.file_type().is_symlink(), target),
            Err(_) => (false, None),
        };
        if is_link && !nm.dirs.is_empty() {
            // A symlink where a directory on the way to locations goes: what it points at is
            // now that directory.
            let kind = nm.dirs.iter().find_map(|&d| self.tree.kind_below(d)).map(str::to_string);
            if let Some(kind) = kind.or_else(|| nm.kind.clone()) {
                out.push(self.planted(&m, path.clone(), kind, "symlink", target.clone(), ev.pid));
            }
            for d in nm.dirs {
                self.walk(&m.nb, path.clone(), d, 0, None, &mut Vec::new());
            }
        } else if let Some(kind) = nm.kind {
            if appeared && !is_link {
                // A new location file: its later writes are reported too.
                if let Ok(dir) = m.nb.root.open_dir(&m.path) {
                    self.mark_file(&dir, &ev.name);
                }
            }
            let op = if is_link {
                "symlink"
            } else if ev.mask & FAN_MOVED_TO != 0 {
                "rename"
            } else if ev.mask & FAN_CREATE != 0 {
                "create"
            } else if ev.mask & FAN_CLOSE_WRITE != 0 {
                "write"
            } else {
                return vec![];
            };
            out.push(self.planted(&m, path, kind, op, target, ev.pid));
        }
        self.fresh(out, &ev.dir, now)
    }

    fn planted(
        &self,
        m: &Marked,
        path: PathBuf,
        kind: String,
        op: &'static str,
        target: Option<PathBuf>,
        pid: Option<u32>,
    ) -> Planted {
        Planted { who: m.nb.who.clone(), path, kind, op, target, pid }
    }

    /// Drops what this directory reported for the same name moments ago.
    fn fresh(&mut self, planted: Vec<Planted>, dir: &DirKey, now: Instant) -> Vec<Planted> {
        if self.recent.len() > 4096 {
            self.recent.retain(|_, t| now.duration_since(*t) < SAME_WRITE);
        }
        planted
            .into_iter()
            .filter(|p| {
                let key = (dir.clone(), p.path.as_os_str().as_bytes().to_vec());
                match self.recent.get(&key) {
                    Some(t) if now.duration_since(*t) < SAME_WRITE => false,
                    _ => {
                        self.recent.insert(key, now);
                        true
                    }
                }
            })
            .collect()
    }

    /// Forgets a notebook's directories (its cgroup is gone). Its marks go with its mounts.
    pub fn forget(&mut self, cgroup_id: u64) {
        let gone: HashSet<RootKey> =
            self.marked.values().filter(|m| m.nb.who.cgroup_id == cgroup_id).map(|m| m.nb.key).collect();
        self.marked.retain(|_, m| m.nb.who.cgroup_id != cgroup_id);
        self.walked.retain(|(k, _)| !gone.contains(k));
        self.marks_per_root.retain(|k, _| !gone.contains(k));
    }

    /// Who made this exec's file executable during the session (drift): a `#!` script, or
    /// a binary that is neither the system's nor a Python interpreter.
    pub fn drift_of(&self, f: &super::ExecFacts<'_>) -> Option<super::written::Made> {
        if f.e.interp.is_none() && (f.system_names.is_some() || f.is_python) {
            return None;
        }
        let root = &f.ids.root;
        self.written.as_ref()?.made(root, &root.real_path(&f.exe_path)?)
    }

    pub fn marks(&self) -> usize {
        self.marked.len()
    }
}
