//! The process table: one entry per live process, kept from fork/exec/exit events and seeded
//! from /proc at start-up, so every exec can name its parent's executable and command line.

use std::{ffi::OsString, fs, path::PathBuf, sync::Arc};

use crate::sensors::decode::{split_args, Exec, Exit, FileId, Fork};

/// What a process is to its notebook, as detection decided at its exec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Unknown,
    /// The notebook server (jupyterhub-singleuser, jupyter-server/lab/notebook).
    Server,
    /// An IPython kernel.
    Kernel,
    /// Some other Python process.
    Python,
    /// An allowed helper (uname, ldconfig, git…).
    Helper,
    /// A Jupyter terminal's shell (allowed).
    Terminal,
    /// A `%pip` shell (allowed).
    PipShell,
    /// The launcher of a sanctioned non-Python kernel (R's wrapper script) and its forks.
    KernelLauncher,
    /// A command the policy names for sanctioned kernels, and what it starts (allowed).
    KernelCommand,
    /// Anything else.
    Other,
}

pub use super::kernel::KernelCtx;

/// The notebook a process serves when its cgroup does not say.
pub type Notebook = Arc<crate::discovery::attribution::Attribution>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// What the process last executed (None when seeded from /proc without access to it).
    pub exe: Option<PathBuf>,
    /// Identity of the loaded binary.
    pub exe_id: Option<FileId>,
    /// Shared with the exec event and with forked children (never copied per event).
    pub argv: Arc<[OsString]>,
    pub comm: String,
    pub cgroup_id: u64,
    pub role: Role,
    /// The nearest kernel's context (inherited by descendants).
    pub kernel: Option<Arc<KernelCtx>>,
    /// The notebook this process serves when its cgroup does not say (LocalProcessSpawner:
    /// set on the server from its environment, inherited by descendants).
    pub notebook: Option<Notebook>,
    /// The incident this process belongs to: set where a shell-out was flagged, inherited by
    /// forks and kept across exec, so what the flagged program runs is folded into it.
    pub incident: Option<u64>,
}

/// The parent chain of an exec, nearest first.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    pub parent: Option<ProcInfo>,
    /// Executables of the ancestors above the parent, nearest first (bounded).
    pub ancestors: Vec<Option<PathBuf>>,
}

pub const MAX_ANCESTORS: usize = 8;

/// Exited processes kept for late questions about them (a file event read after the
/// writer's exit).
const EXITED_KEPT: usize = 256;

#[derive(Default)]
pub struct ProcessTable {
    procs: crate::IdMap<u32, ProcInfo>,
    /// The last EXITED_KEPT processes to exit, oldest first.
    exited: std::collections::VecDeque<ProcInfo>,
    /// cgroup2 mount, to give processes read from /proc their cgroup id.
    cgroup_mount: Option<PathBuf>,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table that records the cgroup of processes it reads from /proc.
    pub fn with_cgroup_mount(mount: PathBuf) -> Self {
        Self { procs: Default::default(), exited: Default::default(), cgroup_mount: Some(mount) }
    }

    /// Fills the table from `/proc` (`proc_root`), for processes that started before the agent.
    /// Kernels among them get their notebook context as if their exec had been seen (their
    /// environment goes to `learn`, for its secrets), and `local_server` names the notebook of
    /// a LocalProcessSpawner server from its environment; both pass to their descendants.
    pub fn seed_from_proc(
        &mut self,
        proc_root: &std::path::Path,
        learn: &mut dyn FnMut(&[u8]),
        local_server: &dyn Fn(&ProcInfo, &[u8]) -> Option<Notebook>,
    ) {
        let Ok(dir) = fs::read_dir(proc_root) else { return };
        for entry in dir.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                self.seed_one(proc_root, pid);
            }
        }
        for p in self.procs.values_mut() {
            if super::kernel::kernel_id(&p.argv).is_some() {
                p.kernel = Some(Arc::new(super::kernel::read(proc_root, p.pid, &p.argv, learn)));
            } else if p.argv.iter().take(3).any(|a| a.to_string_lossy().ends_with("jupyterhub-singleuser")) {
                let environ = fs::read(proc_root.join(p.pid.to_string()).join("environ")).unwrap_or_default();
                learn(&environ);
                p.notebook = local_server(p, &environ);
            }
        }
        self.inherit_seeded();
    }

    /// Gives seeded processes the kernel context and notebook of their nearest ancestor that
    /// has one, as forks would have.
    fn inherit_seeded(&mut self) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            let (mut kernel, mut notebook) = (None, None);
            for p in self.chain(pid, 32) {
                kernel = kernel.or_else(|| p.kernel.clone());
                notebook = notebook.or_else(|| p.notebook.clone());
            }
            if let Some(p) = self.procs.get_mut(&pid) {
                p.kernel = kernel;
                p.notebook = notebook;
            }
        }
    }

    /// Makes sure `pid` is known, reading it from /proc if the table never saw it (its fork
    /// happened outside the watched cgroups, e.g. a container runtime's shim). True if known.
    pub fn ensure(&mut self, proc_root: &std::path::Path, pid: u32) -> bool {
        if self.procs.contains_key(&pid) {
            return true;
        }
        self.seed_one(proc_root, pid);
        self.procs.contains_key(&pid)
    }

    /// Has the table seen what `pid` runs (its exec, or /proc), not only the fork that made
    /// it (whose argv is its parent's until its exec's event comes)?
    pub fn exec_seen(&self, pid: u32) -> bool {
        let chain = self.chain_with_exited(pid, 2);
        match (chain.first(), chain.get(1)) {
            (Some(p), Some(parent)) => !p.argv.is_empty() && !Arc::ptr_eq(&p.argv, &parent.argv),
            (Some(p), None) => !p.argv.is_empty(),
            _ => false,
        }
    }

    /// Brings `pid` up to date with /proc when what it runs there is not what the table says
    /// (its exec's event has not come yet); true if it is alive. A process exiting (its memory
    /// gone, so /proc shows an empty command line and no exe) counts as gone: what it ran is
    /// what the table learned, not the blank /proc has left.
    pub fn refresh(&mut self, proc_root: &std::path::Path, pid: u32) -> bool {
        let Ok(cmdline) = fs::read(proc_root.join(pid.to_string()).join("cmdline")) else { return false };
        if cmdline.is_empty() {
            return false;
        }
        let now: Vec<OsString> = split_args(&cmdline);
        if self.procs.get(&pid).is_some_and(|p| *p.argv == *now) {
            return true;
        }
        self.reseed(proc_root, pid)
    }

    /// Reads `pid` from /proc again (an entry made by a fork whose exec has not come yet);
    /// true if it is alive.
    pub fn reseed(&mut self, proc_root: &std::path::Path, pid: u32) -> bool {
        let kept = self.procs.remove(&pid);
        self.seed_one(proc_root, pid);
        match (self.procs.get_mut(&pid), kept) {
            // What the table knew beyond /proc (notebook, kernel context, role) stays.
            (Some(p), Some(old)) => {
                p.kernel = old.kernel;
                p.notebook = old.notebook;
                p.incident = old.incident;
                p.role = old.role;
                true
            }
            (Some(_), None) => true,
            (None, Some(old)) => {
                self.procs.insert(pid, old);
                false
            }
            (None, None) => false,
        }
    }

    fn seed_one(&mut self, proc_root: &std::path::Path, pid: u32) {
        let p = proc_root.join(pid.to_string());
        // Races with exits are normal here: a vanished process is skipped.
        let Ok(stat) = fs::read_to_string(p.join("stat")) else { return };
        let Some((comm, ppid)) = parse_stat(&stat) else { return };
        let argv = fs::read(p.join("cmdline")).map(|b| split_args(&b)).unwrap_or_default().into();
        let exe = fs::read_link(p.join("exe")).ok();
        let exe_id = fs::metadata(p.join("exe")).ok().map(|m| FileId::of(&m));
        let cgroup_id = self.cgroup_mount.as_ref().and_then(|m| proc_cgroup_id(m, &p)).unwrap_or(0);
        self.procs.insert(
            pid,
            ProcInfo {
                pid,
                ppid,
                exe,
                exe_id,
                argv,
                comm,
                cgroup_id,
                role: Role::Unknown,
                kernel: None,
                notebook: None,
                incident: None,
            },
        );
    }

    /// The cgroup id of live process `pid`, read from /proc (the table is not changed).
    pub fn cgroup_of(&self, proc_root: &std::path::Path, pid: u32) -> Option<u64> {
        proc_cgroup_id(self.cgroup_mount.as_ref()?, &proc_root.join(pid.to_string()))
    }

    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut ProcInfo> {
        self.procs.get_mut(&pid)
    }

    /// The process and its ancestors, nearest first (bounded, loop-safe).
    pub fn chain(&self, pid: u32, max: usize) -> Vec<&ProcInfo> {
        let mut out = Vec::new();
        let mut next = Some(pid);
        while let Some(p) = next {
            if out.len() >= max {
                break;
            }
            match self.procs.get(&p) {
                Some(info) => {
                    out.push(info);
                    next = (info.ppid != p && info.ppid != 0).then_some(info.ppid);
                }
                None => break,
            }
        }
        out
    }

    /// Every process (for backfilling kernel state after a policy change).
    pub fn iter(&self) -> impl Iterator<Item = &ProcInfo> {
        self.procs.values()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Records the exec. The kernel context and the notebook survive exec (a shell started by
    /// a kernel still serves it); everything else is the new image's.
    pub fn on_exec(&mut self, e: &Exec) {
        let fresh = |kernel, notebook, incident| ProcInfo {
            pid: e.meta.tgid,
            ppid: e.ppid,
            exe: Some(e.filename.clone()),
            exe_id: Some(e.exe),
            argv: e.argv.clone(),
            comm: e.comm.clone(),
            cgroup_id: e.meta.cgroup_id,
            role: Role::Unknown,
            kernel,
            notebook,
            incident,
        };
        match self.procs.get_mut(&e.meta.tgid) {
            Some(p) => *p = fresh(p.kernel.take(), p.notebook.take(), p.incident),
            None => {
                self.procs.insert(e.meta.tgid, fresh(None, None, None));
            }
        }
    }

    /// A forked child runs its parent's image until it execs.
    pub fn on_fork(&mut self, f: &Fork) {
        let parent = f.meta.tgid;
        let child = match self.procs.get(&parent) {
            Some(p) => ProcInfo { pid: f.child_tgid, ppid: parent, cgroup_id: f.meta.cgroup_id, ..p.clone() },
            None => ProcInfo {
                pid: f.child_tgid,
                ppid: parent,
                exe: None,
                exe_id: None,
                argv: Arc::new([]),
                comm: String::new(),
                cgroup_id: f.meta.cgroup_id,
                role: Role::Unknown,
                kernel: None,
                notebook: None,
                incident: None,
            },
        };
        self.procs.insert(f.child_tgid, child);
    }

    pub fn on_exit(&mut self, x: &Exit) {
        if let Some(p) = self.procs.remove(&x.meta.tgid) {
            if self.exited.len() >= EXITED_KEPT {
                self.exited.pop_front();
            }
            self.exited.push_back(p);
        }
    }

    /// As [`Self::chain`], also through processes that exited moments ago (the latest with
    /// each pid): who wrote a file, asked after the writer is gone.
    pub fn chain_with_exited(&self, pid: u32, max: usize) -> Vec<ProcInfo> {
        let mut out: Vec<ProcInfo> = Vec::new();
        let mut next = Some(pid);
        while let Some(p) = next {
            if out.len() >= max || out.iter().any(|q| q.pid == p) {
                break;
            }
            let info = self.procs.get(&p).or_else(|| self.exited.iter().rev().find(|q| q.pid == p));
            let Some(info) = info else { break };
            out.push(info.clone());
            next = (info.ppid != p && info.ppid != 0).then_some(info.ppid);
        }
        out
    }

    pub fn lineage(&self, ppid: u32) -> Lineage {
        let parent = self.procs.get(&ppid).cloned();
        let mut ancestors = Vec::new();
        let mut next = parent.as_ref().map(|p| p.ppid);
        while let Some(pid) = next {
            if pid == 0 || ancestors.len() >= MAX_ANCESTORS {
                break;
            }
            match self.procs.get(&pid) {
                Some(p) => {
                    ancestors.push(p.exe.clone());
                    next = (p.ppid != pid).then_some(p.ppid);
                }
                None => break,
            }
        }
        Lineage { parent, ancestors }
    }

    /// Drops entries whose process no longer exists (their exit event was lost or predates
    /// the agent). Cheap enough to run every minute: one stat per entry.
    pub fn sweep(&mut self, proc_root: &std::path::Path) -> usize {
        let before = self.procs.len();
        self.procs.retain(|pid, _| proc_root.join(pid.to_string()).exists());
        before - self.procs.len()
    }
}

/// The cgroup v2 id of a /proc/PID directory's process (`0::/path` → inode of the path).
fn proc_cgroup_id(mount: &std::path::Path, proc_dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = fs::read_to_string(proc_dir.join("cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(fs::metadata(mount.join(rel.trim_start_matches('/'))).ok()?.ino())
}

/// (comm, ppid) from `/proc/PID/stat`; comm may contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 2..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// Joins argv for display the way `ps` does; lossy for non-UTF-8 bytes.
pub fn cmdline(argv: &[OsString]) -> String {
    argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
