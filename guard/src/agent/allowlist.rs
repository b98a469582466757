//! What the kernel must know to enforce a notebook root: its exec allow-list (Python,
//! kernels' launchers, helpers and helper scripts, shells by class) and the marks of what
//! already runs there (processes that started before their cgroup was enforced).

use std::{io::Write, path::Path};

use anyhow::Result;
use guard_abi::allow_class;

use super::Pipeline;
use crate::{policy::HelperParent, process::roles::role_of, process::table::Role, sensors::decode::FileId};

impl<W: Write> Pipeline<W> {
    /// Loads the exec allow-list of the root that cgroup `cg`'s processes see into the kernel.
    pub(super) fn sync_identities(&mut self, cg: u64, tgid: u32, ppid: u32) -> Result<()> {
        let shells = self.detector.policy.shells.clone();
        // Per helper entry: may it run under another helper? (A helper any of whose entries
        // allows that is chained.)
        let under_helper: Vec<bool> =
            self.detector.policy.helpers.iter().map(|h| h.parent == HelperParent::Helper).collect();
        let Some((_, ids)) = self.enricher.root_identities(cg, &[tgid, ppid], &self.detector.policy) else {
            return Ok(());
        };
        let chained = |hs: &[usize]| hs.iter().any(|&h| under_helper.get(h).copied().unwrap_or(false));
        let helpers: Vec<(FileId, bool)> = ids.helpers.iter().map(|(id, hs)| (*id, chained(hs))).collect();
        let helper_class = |hs: &[usize]| if chained(hs) { allow_class::CHAINED_HELPER } else { allow_class::HELPER };
        let shell_ids = ids.system_ids_named(&shells);
        let python = ids.python.clone();
        let launchers: Vec<_> = ids.launchers.keys().copied().collect();
        let scripts: Vec<_> = ids
            .launcher_scripts
            .keys()
            .map(|p| (p.clone(), allow_class::LAUNCHER))
            .chain(ids.helper_scripts.iter().map(|(p, hs)| (p.clone(), helper_class(hs))))
            .collect();
        let mnt_ns = ids.root.mnt_ns;
        tracing::info!(
            python = python.len(),
            kernels = ?ids.launchers.values().chain(ids.launcher_scripts.values()).collect::<Vec<_>>(),
            helpers = helpers.len(),
            shells = shell_ids.len(),
            "exec allow-list loaded for a notebook root"
        );
        if let Some(ns) = mnt_ns {
            self.enforcer.allow_script_paths(ns, &scripts)?;
        }
        self.enforcer.allow(&python, &launchers, &helpers, &shell_ids)
    }

    /// Marks the Python processes (and their descendants) already running in `cg` or below
    /// it, and registers its notebook servers: they started before the kernel could judge them
    /// (agent restart, policy change).
    pub(super) fn backfill_marks(&mut self, cg: u64) -> Result<()> {
        let Some(base) = self.attributor.cgroups.resolve(cg) else { return Ok(()) };
        // What runs there now, also what the agent has not seen exec yet (its events are still
        // on their way): a server whose exec is still queued would otherwise stay unmarked.
        self.seed_members(&base);
        let candidates: Vec<(u32, u32, u64)> =
            self.table.iter().filter(|p| p.cgroup_id != 0).map(|p| (p.pid, p.ppid, p.cgroup_id)).collect();
        let (mut marked, mut servers) = (0, 0);
        for (pid, ppid, pcg) in candidates {
            if pcg != cg && !self.attributor.cgroups.resolve(pcg).is_some_and(|p| p.starts_with(&base)) {
                continue;
            }
            let chain: Vec<_> = self.table.chain(pid, 32).into_iter().map(|p| p.exe_id).collect();
            // The allow-list first, so helpers are not killed before the first exec event.
            if let Some((root, _)) = self.enricher.root_identities(pcg, &[pid, ppid], &self.detector.policy) {
                if self.synced_roots.insert(root) {
                    self.sync_identities(pcg, pid, ppid)?;
                }
            }
            let Some((_, ids)) = self.enricher.root_identities(pcg, &[pid, ppid], &self.detector.policy) else {
                continue;
            };
            if chain.iter().flatten().any(|id| ids.python.contains(id)) {
                self.enforcer.mark_under_python(pid)?;
                marked += 1;
            }
            let is_python = chain.first().copied().flatten().is_some_and(|id| ids.python.contains(&id));
            if self.table.get(pid).is_some_and(|p| role_of(p, is_python) == Role::Server) {
                self.enforcer.add_server(pid)?;
                servers += 1;
            }
        }
        tracing::info!(cgroup = %base.display(), id = cg, marked, servers, "cgroup under enforcement");
        Ok(())
    }

    /// Reads the processes of cgroup `rel` and those below it into the process table (from
    /// /proc) where the table does not know them yet.
    pub(super) fn seed_members(&mut self, rel: &Path) {
        let mut dirs = vec![crate::discovery::cgroup::on_mount(&self.mount, rel)];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) && dirs.len() < 256 {
                    dirs.push(e.path());
                }
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                self.table.ensure(&self.proc_root, pid);
            }
        }
    }
}
