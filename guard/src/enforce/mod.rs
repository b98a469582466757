//! Programs the kernel's enforcement maps: which cgroups are enforced (with which
//! allowances), which file identities may run, which processes are notebook servers.
//!
//! The decision itself is made in BPF at `sched_process_exec`, before the new image's first
//! instruction; this module only keeps the maps in step with policy and discovery.
//!
//! With pinning (the default for `guard run`) the maps and programs outlive the agent, so
//! enforcement continues across a restart and the next agent adopts these maps as they are.

pub mod egress;
pub mod incarnations;
pub mod processes;
pub mod scopes;
pub mod status;

use std::path::Path;

use anyhow::Result;
use aya::maps::{HashMap as BpfHash, MapData};
use guard_abi::{allow_class, enforce_flags, marks, names, FileKey, Placement, ENFORCED_ANY};

use crate::{
    policy::{Effective, Mode},
    sensors::{
        decode::FileId,
        maps::{EnforcementMaps, MapWrite},
    },
};
use incarnations::Incarnations;
use scopes::{NotebookKey, Scopes};

pub struct KernelEnforcer {
    enforced: BpfHash<MapData, u64, u32>,
    allowed: BpfHash<MapData, FileKey, u32>,
    kernel_commands: BpfHash<MapData, guard_abi::ByteKey, u32>,
    launchers: BpfHash<MapData, guard_abi::ByteKey, u32>,
    marks: BpfHash<MapData, u32, u32>,
    servers: BpfHash<MapData, u32, u32>,
    incarnations: Incarnations,
    scopes: Scopes,
    /// What we wrote, to avoid rewriting it per event.
    enforced_now: crate::IdMap<u64, u32>,
    allowed_now: crate::IdMap<FileKey, u32>,
}

/// A user-space identity as the kernel keys it (kernel dev_t encoding).
pub fn file_key(id: &FileId) -> FileKey {
    let (maj, min) = (libc::major(id.dev), libc::minor(id.dev));
    FileKey { dev: (maj << 20) | (min & 0xfffff), ctime_nsec: id.ctime_nsec, ino: id.ino, ctime_sec: id.ctime_sec }
}

/// `ENFORCED` flags for an effective policy (None: not enforced).
pub fn flags_for(eff: &Effective) -> Option<u32> {
    if eff.mode != Mode::Enforce {
        return None;
    }
    let mut f = enforce_flags::ON;
    if eff.allowances.terminals {
        f |= enforce_flags::TERMINALS;
    }
    if eff.allowances.pip_magic {
        f |= enforce_flags::PIP_MAGIC;
    }
    Some(f)
}

impl KernelEnforcer {
    pub fn new(maps: EnforcementMaps) -> Self {
        let EnforcementMaps { enforced, allowed, marks, servers, incarnations, scopes, kernel_commands, launchers } =
            maps;
        // What the kernel already enforces (pinned maps of the previous agent) is known from the
        // start, so discovery under a policy that no longer enforces a cgroup takes it off; an
        // agent restarted in monitor mode used to leave its predecessor's enforcement on.
        let enforced_now: crate::IdMap<u64, u32> =
            enforced.iter().flatten().filter(|(cgroup, _)| *cgroup != ENFORCED_ANY).collect();
        let incarnations = Incarnations::new(incarnations);
        let scopes = Scopes::new(scopes);
        let mut e = Self {
            enforced,
            allowed,
            kernel_commands,
            launchers,
            marks,
            servers,
            incarnations,
            scopes,
            enforced_now,
            allowed_now: Default::default(),
        };
        // Maps adopted from an agent that predates ENFORCED_ANY: their cgroups stay enforced
        // without a gap.
        if !e.enforced_now.is_empty() {
            let _ = e.enforced.insert(ENFORCED_ANY, 1, 0);
        }
        e
    }

    /// Sets (or clears, with None) enforcement for a cgroup and everything below it.
    pub fn set_cgroup(&mut self, cgroup_id: u64, flags: Option<u32>) -> Result<()> {
        match flags {
            Some(f) if self.enforced_now.get(&cgroup_id) != Some(&f) => {
                // The marker first: the exec program looks at the cgroups only while it is there.
                if self.enforced_now.is_empty() {
                    self.marker_on()?;
                }
                self.enforced
                    .insert(cgroup_id, f, 0)
                    .in_map(names::ENFORCED, || format!("enforcing cgroup {cgroup_id}"))?;
                tracing::debug!(cgroup_id, flags = f, "cgroup enforced");
                self.enforced_now.insert(cgroup_id, f);
            }
            None => {
                // Also when we never wrote it: the kernel enforces a new incarnation by itself.
                let had = self.enforced_now.remove(&cgroup_id).is_some();
                if self.enforced.remove(&cgroup_id).is_ok() || had {
                    self.settle();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn marker_on(&mut self) -> Result<()> {
        Ok(self.enforced.insert(ENFORCED_ANY, 1, 0).in_map(names::ENFORCED, || "marking enforcement on".into())?)
    }

    /// Takes the marker off, and forgets the per-process state, once nothing is enforced, no
    /// incarnation to come would be, and no process scope exists.
    fn settle(&mut self) {
        if self.enforced_now.is_empty() && !self.incarnations.enforcing() && !self.scopes.any() {
            let _ = self.enforced.remove(&ENFORCED_ANY);
            self.forget_processes();
        }
    }

    /// What a new cgroup made at `rel` gets from the kernel before its first exec: these
    /// enforcement flags (None: not enforced) and this `EGRESS_CG` value (0: none).
    pub fn remember_incarnation(&mut self, rel: &Path, flags: Option<u32>, egress: u32) -> Result<()> {
        self.incarnations.remember(rel, Placement { enforce: flags.unwrap_or(0), egress })?;
        self.settle();
        Ok(())
    }

    /// Forgets every remembered path (policy reload: placing the notebooks writes them again).
    pub fn forget_incarnations(&mut self) {
        self.incarnations.clear();
        self.settle();
    }

    /// Removes the entries of cgroups that no longer exist (`alive` says which do): the
    /// kernel's own entries for incarnations the agent never saw exec, and any the agent
    /// missed the removal of. Returns how many went.
    pub fn sweep(&mut self, alive: impl Fn(u64) -> bool) -> usize {
        let dead: Vec<u64> = self.enforced.keys().flatten().filter(|id| *id != ENFORCED_ANY && !alive(*id)).collect();
        for id in &dead {
            let _ = self.enforced.remove(id);
            self.enforced_now.remove(id);
        }
        if !dead.is_empty() {
            self.settle();
        }
        dead.len()
    }

    /// Empties `MARKS` and `SERVERS` once nothing is enforced: the kernel stops keeping them
    /// (exits no longer remove entries), and an entry left behind could name a reused pid when
    /// enforcement resumes. Resuming marks and registers what runs then (`backfill_marks`).
    fn forget_processes(&mut self) {
        // Another pass if the first found entries: an exec judged just before the key went
        // may still have written its mark behind the first sweep.
        for _ in 0..3 {
            let marks: Vec<u32> = self.marks.keys().flatten().collect();
            let servers: Vec<u32> = self.servers.keys().flatten().collect();
            if marks.is_empty() && servers.is_empty() {
                break;
            }
            for tgid in marks {
                let _ = self.marks.remove(&tgid);
            }
            for tgid in servers {
                let _ = self.servers.remove(&tgid);
            }
        }
        tracing::debug!("nothing enforced: process marks and servers forgotten");
    }

    pub fn is_enforced(&self, cgroup_id: u64) -> bool {
        self.enforced_now.contains_key(&cgroup_id)
    }

    /// Adds identities to the allow-list (Python first: a Python identity is never demoted).
    /// `helpers`: (identity, whether it may also run under another helper).
    pub fn allow(
        &mut self,
        python: &crate::IdSet<FileId>,
        launchers: &[FileId],
        helpers: &[(FileId, bool)],
        shells: &[FileId],
    ) -> Result<()> {
        let helper_class = |chained: bool| if chained { allow_class::CHAINED_HELPER } else { allow_class::HELPER };
        let entries = python
            .iter()
            .map(|id| (id, allow_class::PYTHON))
            .chain(launchers.iter().map(|id| (id, allow_class::LAUNCHER)))
            .chain(helpers.iter().map(|(id, chained)| (id, helper_class(*chained))))
            .chain(shells.iter().map(|id| (id, allow_class::SHELL)));
        for (id, class) in entries {
            let key = file_key(id);
            match self.allowed_now.get(&key) {
                Some(&c) if c == class || c == allow_class::PYTHON => continue,
                _ => {}
            }
            self.allowed.insert(key, class, 0).in_map(names::ALLOWED, || "updating the exec allow-list".into())?;
            self.allowed_now.insert(key, class);
        }
        Ok(())
    }

    /// Marks a process as running under the notebook's Python (for processes that started
    /// before their cgroup was enforced or their identities were known).
    pub fn mark_under_python(&mut self, tgid: u32) -> Result<()> {
        let m = self.marks.get(&tgid, 0).unwrap_or(0) | marks::UNDER_PYTHON;
        tracing::debug!(tgid, marks = m, "marking process under Python");
        Ok(self.marks.insert(tgid, m, 0).in_map(names::MARKS, || format!("marking process {tgid}"))?)
    }

    /// Gives process `tgid` the scope of `notebook` (its descendants inherit it in the kernel),
    /// with `placement` applying to the scope; `under_python` marks it as Python's too.
    pub fn scope_process(
        &mut self,
        tgid: u32,
        notebook: &NotebookKey,
        placement: Placement,
        under_python: bool,
    ) -> Result<()> {
        let id = self.scopes.assign(notebook, placement)?;
        // Marks are kept (and inherited at fork) only while the marker is there.
        self.marker_on()?;
        let mut m =
            (self.marks.get(&tgid, 0).unwrap_or(0) & ((1 << marks::SCOPE_SHIFT) - 1)) | id << marks::SCOPE_SHIFT;
        if under_python {
            m |= marks::UNDER_PYTHON;
        }
        tracing::debug!(tgid, scope = id, marks = m, "process scoped");
        Ok(self.marks.insert(tgid, m, 0).in_map(names::MARKS, || format!("scoping process {tgid}"))?)
    }

    /// Claims the scope process `tgid` carries (given by a previous agent) for `notebook`.
    pub fn adopt_scope(&mut self, tgid: u32, notebook: &NotebookKey) {
        if let Ok(m) = self.marks.get(&tgid, 0) {
            self.scopes.adopt(notebook, m >> marks::SCOPE_SHIFT);
        }
    }

    /// Launcher scripts of sanctioned kernels, by path in mount namespace `mnt_ns`.
    /// Trusted `#!` scripts of one mount namespace, by path: (path, `allow_class` — a kernel's
    /// launcher, or a helper).
    pub fn allow_script_paths(&mut self, mnt_ns: u32, paths: &[(std::path::PathBuf, u32)]) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        for (p, class) in paths {
            if let Some(k) = guard_abi::ByteKey::of(mnt_ns, p.as_os_str().as_bytes()) {
                self.launchers
                    .insert(k, class, 0)
                    .in_map(names::LAUNCHERS, || format!("trusting script {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// The exact commands sanctioned kernels may run through a shell (policy
    /// `kernel_commands`), replacing those of the previous policy.
    pub fn set_kernel_commands(&mut self, commands: &[Vec<String>]) -> Result<()> {
        let wanted: Vec<guard_abi::ByteKey> = commands
            .iter()
            .filter_map(|argv| {
                let block: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
                guard_abi::ByteKey::of(0, &block)
            })
            .collect();
        let old: Vec<_> = self.kernel_commands.keys().flatten().filter(|k| !wanted.contains(k)).collect();
        for k in old {
            let _ = self.kernel_commands.remove(&k);
        }
        for k in wanted {
            self.kernel_commands
                .insert(k, 1, 0)
                .in_map(names::KERNEL_COMMANDS, || "loading the kernels' commands".into())?;
        }
        Ok(())
    }

    pub fn add_server(&mut self, tgid: u32) -> Result<()> {
        Ok(self.servers.insert(tgid, 1, 0).in_map(names::SERVERS, || format!("registering server {tgid}"))?)
    }

    pub fn cgroups(&self) -> Vec<u64> {
        self.enforced_now.keys().copied().collect()
    }

    pub fn enforced_cgroups(&self) -> usize {
        self.enforced_now.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Allowances;

    #[test]
    fn kernel_dev_encoding() {
        let k = file_key(&FileId { dev: libc::makedev(254, 3), ino: 7, ctime_sec: 9, ctime_nsec: 8 });
        assert_eq!((k.ctime_sec, k.ctime_nsec), (9, 8));
        assert_eq!(k.dev, (254 << 20) | 3);
        assert_eq!(k.ino, 7);
    }

    #[test]
    fn flags_follow_mode_and_allowances() {
        let eff =
            Effective { mode: Mode::Monitor, allowances: Allowances::default(), egress_policy: 1, seccomp_profile: 0 };
        assert_eq!(flags_for(&eff), None);
        let eff = Effective {
            mode: Mode::Enforce,
            allowances: Allowances { terminals: true, pip_magic: false },
            egress_policy: 1,
            seccomp_profile: 0,
        };
        assert_eq!(flags_for(&eff), Some(enforce_flags::ON | enforce_flags::TERMINALS));
    }
}
