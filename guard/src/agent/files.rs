//! The file sensor in the pipeline: which notebooks' persistence locations are watched (their
//! servers' and kernels' roots, homes and environments, as they start and at start-up), and
//! its events through enrichment (what was planted, by whom) and detection.
//!
//! Events wait FILE_SETTLE before they are handled, so the ring's exec and fork events of the
//! writer (a short `echo >> ~/.bashrc`) are in the process table by then.

use std::{
    collections::VecDeque,
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::Pipeline;
use crate::{
    discovery::attribution::Attribution,
    enrich::persistence::Watcher,
    policy::{persistence::Tree, Policy},
    process::{roles::is_server_argv, table::Role},
    sensors::files::{FileEvent, FileSensor, FAN_ATTRIB, FAN_CREATE, FAN_ONDIR},
};

pub(super) const FILE_SETTLE: Duration = Duration::from_millis(100);
/// How long an event waits for its writer to reach the table (the ring behind under load).
const WRITER_WAIT: Duration = Duration::from_secs(3);
/// Metadata changes waiting for their writer, at most.
const DEFERRED_MAX: usize = 4096;
/// A change reported by the kernel hook is one if the file's change time is this recent.
const CHANGE_RECENT: Duration = Duration::from_secs(2);
/// Processes in the writer's chain reported.
const WRITER_CHAIN: usize = 8;

/// The file sensor and the watcher, when the kernel allows (a policy with persistence off
/// gets an empty tree, so a reload can switch it on). `drift_hook`: the kernel reports
/// executables written through the ring.
pub(super) fn start(policy: &Policy, drift_hook: bool) -> Option<Watcher> {
    match FileSensor::new() {
        Ok(sensor) => {
            if !sensor.writer_pids {
                tracing::warn!("persistence writes are watched, but their writers will be unknown: fanotify reports pids only to a listener with CAP_SYS_ADMIN");
            }
            let drift = FileSensor::new()
                .map_err(|e| tracing::warn!(error = %e, "no fanotify group for drift: executables made on file systems whose chmods the kernel hook misses are not watched"))
                .ok();
            tracing::info!(
                kernel_hook = drift_hook,
                fanotify = drift.is_some(),
                "executables made in sessions (drift): the kernel hook where it sees chmods (ext4), fanotify file-system marks elsewhere"
            );
            Some(Watcher::new(tree_of(policy), sensor, drift, drift_hook))
        }
        Err(e) => {
            tracing::warn!(error = %e, "persistence locations are not watched: fanotify is not available");
            None
        }
    }
}

/// The policy's locations as a tree (none when persistence is off). The policy was
/// validated, so they compile.
fn tree_of(policy: &Policy) -> Tree {
    let locations = if policy.persistence.enabled { &policy.persistence.locations[..] } else { &[] };
    Tree::compile(locations).unwrap_or_else(|(key, _, message)| {
        tracing::error!(%key, %message, "persistence locations");
        Tree::empty()
    })
}

/// A server or kernel found running: pid, cgroup id, role, argv, exe.
type Running = (u32, u64, Role, Arc<[std::ffi::OsString]>, Option<std::path::PathBuf>);

/// File events received and not yet handled, oldest first.
#[derive(Default)]
pub(super) struct PendingFiles(VecDeque<(Instant, FileEvent)>);

impl PendingFiles {
    pub(super) fn push(&mut self, events: Vec<FileEvent>, now: Instant) {
        self.0.extend(events.into_iter().map(|e| (now, e)));
    }

    fn ready(&mut self, now: Instant) -> Vec<(Instant, FileEvent)> {
        let mut out = Vec::new();
        while self.0.front().is_some_and(|(t, _)| now.duration_since(*t) >= FILE_SETTLE) {
            out.extend(self.0.pop_front());
        }
        out
    }

    /// Events to handle at a later tick, ahead of those received since.
    fn defer(&mut self, events: Vec<(Instant, FileEvent)>) {
        for e in events.into_iter().rev() {
            self.0.push_front(e);
        }
    }
}

impl<W: Write> Pipeline<W> {
    /// After an exec judged in notebook `who`: a server or kernel has its locations watched.
    pub(super) fn watch_files(&mut self, pid: u32, exe: &Path, role: Role, who: &Arc<Attribution>) {
        if !matches!(role, Role::Server | Role::Kernel) {
            return;
        }
        let Some(w) = self.files.as_mut() else { return };
        let environ = std::fs::read(self.proc_root.join(pid.to_string()).join("environ")).unwrap_or_default();
        w.watch(&self.proc_root, pid, &environ, Some(exe), who, &self.detector.policy.writable_paths);
    }

    /// At start-up (and after a reload): the servers and kernels already running have their
    /// locations watched; at start-up their posture is checked too.
    pub(super) fn meet_running(&mut self, posture: bool) {
        let running: Vec<Running> = self
            .table
            .iter()
            .filter_map(|p| {
                let argv: Vec<String> = p.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
                let role = if crate::process::kernel::kernel_id(&p.argv).is_some() && p.kernel.is_some() {
                    Role::Kernel
                } else if is_server_argv(&argv) {
                    Role::Server
                } else {
                    return None;
                };
                Some((p.pid, p.cgroup_id, role, p.argv.clone(), p.exe.clone()))
            })
            .collect();
        for (pid, cgroup_id, role, argv, exe) in running {
            let Some(who) = self.who(cgroup_id, pid) else { continue };
            // The exe as /proc shows it is the host's view; the path the process ran is
            // its own, found from its command line.
            let exe = argv.first().map(std::path::PathBuf::from).filter(|p| p.is_absolute()).or(exe);
            if let Some(exe) = exe {
                self.watch_files(pid, &exe, role, &who);
            }
            if posture {
                self.check_posture(pid, role, &argv, &who);
            }
        }
    }

    /// Handles the file events that waited long enough. One whose writer is not in the table
    /// yet (the ring, behind under load, has not brought its exec) waits for it a while.
    pub(super) fn settle_files(&mut self, now: Instant) {
        let ready = self.pending_files.ready(now);
        let mut later = Vec::new();
        for (received, ev) in ready {
            if !self.files.as_ref().is_some_and(|w| w.concerns(&ev)) {
                self.event_counts.file.inc();
                continue;
            }
            if let Some(pid) = ev.pid {
                // Alive, the writer is what /proc says now (the ring may be behind); gone, what
                // the table learned, once it has its exec.
                let alive = self.table.refresh(&self.proc_root, pid);
                if !alive && !self.table.exec_seen(pid) && now.duration_since(received) < WRITER_WAIT {
                    later.push((received, ev));
                    continue;
                }
            }
            self.event_counts.file.inc();
            let Some(w) = self.files.as_mut() else { return };
            for p in w.on_event(&ev, now) {
                let chain = match p.pid {
                    Some(pid) => self.table.chain_with_exited(pid, WRITER_CHAIN),
                    None => Vec::new(),
                };
                if let Some(a) = self.detector.on_planted(&p, &chain) {
                    self.respond(a);
                }
            }
        }
        self.pending_files.defer(later);
    }

    /// Before an exec in a notebook that may be of a file made in the session: the metadata
    /// changes already made are taken in now (`chmod +x t && ./t` execs within a millisecond
    /// of the chmod; the kernel queued the chmod's event before the chmod returned). The
    /// chmod's own process is in the table by then: its events came through the ring first.
    pub(super) fn take_in_drift(&mut self, e: &crate::sensors::decode::Exec) {
        if e.interp.is_none() && crate::enrich::paths::in_system_dir(&e.filename) {
            return;
        }
        self.read_drift();
    }

    /// The drift group's events, read here only (never by a reader thread, whose batches an
    /// exec could overtake). Between execs, the file tick reads them; meanwhile the kernel
    /// merges repeats (a chmod loop on one file) into one queued event.
    pub(super) fn read_drift(&mut self) {
        let Some(drift) = self.files.as_ref().and_then(|w| w.written.as_ref()?.sensor()) else { return };
        let now = Instant::now();
        let fresh = drift.read_now();
        self.event_counts.file.inc_by(fresh.len() as u64);
        let mut events: Vec<(Instant, FileEvent)> = self.deferred_attrib.drain(..).collect();
        events.extend(fresh.into_iter().map(|e| (now, e)));
        for (received, ev) in events {
            if ev.mask & (FAN_ATTRIB | FAN_CREATE) != 0
                && !self.on_attrib(&ev, now)
                && now.duration_since(received) < WRITER_WAIT
                && self.deferred_attrib.len() < DEFERRED_MAX
            {
                self.deferred_attrib.push_back((received, ev));
            }
        }
    }

    /// A metadata change or a file made: kept when a notebook process left a file executable
    /// (drift).
    /// Returns false when its writer is gone and not known yet (the ring has not brought
    /// its exec): the caller asks again later.
    fn on_attrib(&mut self, ev: &FileEvent, now: Instant) -> bool {
        let Some(pid) = ev.pid.filter(|_| ev.mask & FAN_ONDIR == 0) else { return true };
        // One the table never saw is looked up only when its cgroup is a notebook's: changes
        // all over a marked disk (the node's own) must not fill the table.
        if !self.table.exec_seen(pid) {
            let Some(id) = self.table.cgroup_of(&self.proc_root, pid) else { return false };
            if self.attributor.attribute(id, pid).is_none() {
                return true;
            }
            self.table.reseed(&self.proc_root, pid);
        }
        let chain = self.table.chain_with_exited(pid, WRITER_CHAIN);
        let Some(cgroup_id) = chain.first().map(|p| p.cgroup_id) else { return true };
        if self.who(cgroup_id, pid).is_some() {
            if let Some(w) = self.files.as_mut().and_then(|f| f.written.as_mut()) {
                w.on_attrib(ev, chain, now);
            }
        }
        true
    }

    /// The kernel hook's report of an executable a process changed: kept when the process
    /// is a notebook's and the change is recent. An exec's atime update of an old file marks
    /// it dirty too, with its old change time.
    pub(super) fn on_written(&mut self, w: &crate::sensors::decode::Written) {
        let tgid = w.meta.tgid;
        if self.who(w.meta.cgroup_id, tgid).is_none() {
            return;
        }
        let ctime = i128::from(w.file.ctime_sec) * 1_000_000_000 + i128::from(w.file.ctime_nsec);
        let at = self.clock.wall(w.meta.ktime_ns).unix_timestamp_nanos();
        if at - ctime > CHANGE_RECENT.as_nanos() as i128 {
            return;
        }
        // Its exec came before, through the ring; one from before the agent is read now.
        self.table.ensure(&self.proc_root, tgid);
        let chain = self.table.chain_with_exited(tgid, WRITER_CHAIN);
        if let Some(written) = self.files.as_mut().and_then(|f| f.written.as_mut()) {
            written.on_written(w.file, chain, Instant::now());
        }
    }

    /// A new policy's locations (or none): what is watched is walked again.
    pub(super) fn reload_files(&mut self, policy: &Policy) {
        if let Some(w) = self.files.as_mut() {
            w.set_tree(tree_of(policy));
            self.meet_running(false);
        }
    }
}
