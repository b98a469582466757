//! Notebook placement: which cgroups are notebooks and what the kernel enforces for each —
//! found by scanning (units, scopes, pods' cgroups), by the pod watch, or at a notebook's
//! first exec. All of them go through [`Pipeline::place`]. A cgroup made again at the same
//! path (a restarted unit or container) is a new incarnation with a new id: it is placed on
//! its own, and everything kept under the old id is forgotten.

use std::{io::Write, path::Path, sync::Arc};

use anyhow::{Context, Result};

use super::Pipeline;
use crate::{
    discovery::{
        attribution::{Attribution, Source},
        cgroup::cgroup_id,
        kube::{PodChange, PodInfo},
        scan::{find_pod_cgroup, scan},
        workload::Workload,
    },
    enforce::flags_for,
    policy::Effective,
    process::{roles::role_of, table::Role},
    sensors::decode::Exec,
};

impl<W: Write> Pipeline<W> {
    /// Puts notebook cgroup `id` under the policy's decision for `who`: exec enforcement,
    /// egress, the seccomp drift watch, and — for notebooks known by their cgroup's path —
    /// what the kernel gives the next cgroup made at that path. Cheap when nothing changed.
    pub(super) fn place(&mut self, id: u64, who: &Arc<Attribution>, eff: &Effective) -> Result<()> {
        if self.placed.get(&id) == Some(eff) {
            return Ok(());
        }
        let flags = flags_for(eff);
        // A pod's containers are enforced through the pod's own cgroup, registered before they
        // start; its seccomp drift is watched there too.
        let container_of_pod = who.source == Source::Kubernetes && who.container_id.is_some();
        if !(container_of_pod && self.pod_enforced(who)) {
            self.enforce_cgroup(id, flags)?;
        }
        self.egress.set_cgroup(id, eff)?;
        if !container_of_pod {
            self.set_drift(id, eff, who.clone())?;
        }
        if matches!(who.source, Source::Tljh | Source::SystemdSpawner | Source::DockerSpawner) {
            let egress = self.egress.value_of(id);
            self.enforcer.remember_incarnation(&who.cgroup, flags, egress)?;
        }
        self.placed.insert(id, *eff);
        self.learn_hub_of_cgroup(id)
    }

    /// Forgets everything kept under cgroup `id` (removed, or replaced by a new incarnation).
    pub(super) fn forget_cgroup(&mut self, id: u64) -> Result<()> {
        self.enforcer.set_cgroup(id, None)?;
        self.egress.forget(id);
        if let Some(d) = self.drift.as_mut() {
            d.unassign(id);
        }
        self.placed.remove(&id);
        if let Some(w) = self.files.as_mut() {
            w.forget(id);
        }
        self.posture.forget(id);
        self.enricher.identities.forget_cgroup(id);
        self.attributor.forget(id);
        if !self.watch_all {
            let _ = self.sensor.unwatch_cgroup(id);
        }
        Ok(())
    }

    /// Drops kernel entries of cgroups that are gone: those the kernel itself gave to an
    /// incarnation the agent never saw exec, and removals a scan missed.
    pub(super) fn sweep_dead_cgroups(&mut self) -> Result<()> {
        let resolver = &self.attributor.cgroups;
        let swept = self.enforcer.sweep(|id| resolver.exists(id));
        let mut dead: Vec<u64> = self.placed.keys().copied().filter(|id| !resolver.exists(*id)).collect();
        dead.extend(self.egress.dead(|id| resolver.exists(id)));
        dead.sort_unstable();
        dead.dedup();
        for id in &dead {
            self.forget_cgroup(*id)?;
        }
        if swept + dead.len() > 0 {
            tracing::debug!(enforced = swept, placed_or_egress = dead.len(), "entries of removed cgroups dropped");
        }
        Ok(())
    }

    /// Kernel enforcement work for an exec in an enforced notebook: its root's allow-list,
    /// the Python mark the kernel could not give (it judged the exec before the cgroup or the
    /// identity was known), and a server's registration (terminals are shells it starts).
    pub(super) fn enforced_exec(
        &mut self,
        e: &Exec,
        role: Role,
        root: Option<crate::policy::identity::RootKey>,
        server: Option<u32>,
    ) -> Result<()> {
        if let Some(root) = root {
            if self.synced_roots.insert(root) {
                self.sync_identities(e.meta.cgroup_id, e.meta.tgid, e.ppid)?;
            }
        }
        if matches!(role, Role::Server | Role::Kernel | Role::Python)
            && e.kernel_flags & guard_abi::exec_flags::UNDER_PYTHON == 0
        {
            self.enforcer.mark_under_python(e.meta.tgid)?;
        }
        if let Some(server) = server {
            self.enforcer.add_server(server)?;
        }
        Ok(())
    }

    /// A LocalProcessSpawner notebook's process `tgid` (its server, or at start-up what the
    /// server already runs) gets the notebook's scope: the kernel then judges its exec and
    /// egress, and its descendants', never the hub's, the proxy's or other users' servers in
    /// the same cgroup.
    pub(super) fn place_local(
        &mut self,
        tgid: u32,
        who: &Attribution,
        eff: &Effective,
        under_python: bool,
    ) -> Result<()> {
        let key = (who.user.clone().unwrap_or_default(), who.server.clone().unwrap_or_default());
        let placement =
            guard_abi::Placement { enforce: flags_for(eff).unwrap_or(0), egress: self.egress.value_for(eff) };
        self.enforcer.scope_process(tgid, &key, placement, under_python)?;
        self.learn_hub_of_server(tgid)
    }

    /// Scopes every LocalProcessSpawner notebook process the table knows (start-up, where they
    /// were seeded from /proc; a policy reload), claiming scopes a previous agent gave them.
    pub(super) fn scope_local_notebooks(&mut self) -> Result<()> {
        let local: Vec<(u32, u32, u64, Arc<Attribution>)> = self
            .table
            .iter()
            .filter_map(|p| Some((p.pid, p.ppid, p.cgroup_id, p.notebook.clone()?)))
            .filter(|(.., who)| who.source == Source::LocalProcessSpawner)
            .collect();
        for (pid, _, _, who) in &local {
            let key = (who.user.clone().unwrap_or_default(), who.server.clone().unwrap_or_default());
            self.enforcer.adopt_scope(*pid, &key);
        }
        for (pid, ppid, cg, who) in local {
            let eff = self.detector.policy.effective(Some(&who), self.detector.mode_flag);
            let chain: Vec<_> = self.table.chain(pid, 32).into_iter().map(|p| p.exe_id).collect();
            let Some((root, ids)) = self.enricher.root_identities(cg, &[pid, ppid], &self.detector.policy) else {
                continue;
            };
            let under_python = chain.iter().flatten().any(|id| ids.python.contains(id));
            let is_server = chain.first().copied().flatten().is_some_and(|id| ids.python.contains(&id))
                && self.table.get(pid).is_some_and(|p| role_of(p, true) == Role::Server);
            self.place_local(pid, &who, &eff, under_python)?;
            if flags_for(&eff).is_some() {
                if self.synced_roots.insert(root) {
                    self.sync_identities(cg, pid, ppid)?;
                }
                if is_server {
                    self.enforcer.add_server(pid)?;
                }
            }
        }
        Ok(())
    }

    /// Watches a notebook cgroup against its assigned seccomp profile (or stops watching it).
    /// The recorder is attached on first use: nodes whose policy assigns no profile never pay
    /// for a `sys_enter` program.
    fn set_drift(&mut self, cgroup_id: u64, eff: &Effective, who: Arc<Attribution>) -> Result<()> {
        let policy = self.detector.policy.clone();
        match policy.seccomp_profile_by_id(eff.seccomp_profile) {
            Some((path, profile)) => {
                let drift = match &mut self.drift {
                    Some(d) => d,
                    None => {
                        let d = crate::seccomp::drift::DriftWatch::start(&self.btf)
                            .context("attaching the seccomp drift watch")?;
                        tracing::info!("seccomp drift watch attached (raw tracepoint sys_enter)");
                        self.drift.insert(d)
                    }
                };
                drift.assign(cgroup_id, who, eff.seccomp_profile, path, profile)
            }
            None => {
                if let Some(d) = self.drift.as_mut() {
                    d.unassign(cgroup_id);
                }
                Ok(())
            }
        }
    }

    /// Sets a cgroup's enforcement; a newly enforced one gets its running Python marked.
    fn enforce_cgroup(&mut self, id: u64, flags: Option<u32>) -> Result<()> {
        let was = self.enforcer.is_enforced(id);
        self.enforcer.set_cgroup(id, flags)?;
        if flags.is_some() && !was {
            self.backfill_marks(id)?;
        }
        Ok(())
    }

    fn pod_enforced(&self, who: &Attribution) -> bool {
        who.pod_uid.as_ref().and_then(|u| self.pod_cgroups.get(u)).is_some_and(|id| self.enforcer.is_enforced(*id))
    }

    /// Watches new notebook cgroups and places them; a path whose cgroup was made again is
    /// placed again under its new id and the old id forgotten; removed ones are forgotten.
    pub(super) fn scan(&mut self, kube: bool) -> Result<()> {
        let d = &self.detector.policy.discovery;
        let watched = &self.watched;
        let scan = scan(&self.mount, kube, d.tljh, d.docker, &|id| watched.contains_key(&id));
        let gone: Vec<(u64, std::path::PathBuf)> =
            self.watched.iter().filter(|(id, _)| !scan.seen.contains(id)).map(|(id, p)| (*id, p.clone())).collect();
        for (path, workload, id) in scan.new {
            if !self.watch_all {
                self.sensor.watch_cgroup(id)?;
            }
            let rel = Path::new("/").join(path.strip_prefix(&self.mount).unwrap_or(&path));
            let unit = match workload {
                Workload::Tljh { user } => Some((Source::Tljh, user)),
                Workload::SystemdSpawner { user } => Some((Source::SystemdSpawner, user)),
                _ => None,
            };
            if let Some((source, user)) = unit {
                let who =
                    Arc::new(Attribution { user: Some(user), cgroup_id: id, ..Attribution::new(source, rel.clone()) });
                let eff = self.detector.policy.effective(Some(&who), self.detector.mode_flag);
                self.place(id, &who, &eff)?;
            }
            match gone.iter().find(|(_, p)| *p == path) {
                Some((old, _)) => {
                    tracing::info!(cgroup = %rel.display(), id, old, "notebook cgroup made again: a new incarnation")
                }
                None => tracing::info!(cgroup = %rel.display(), id, "watching notebook cgroup"),
            }
            self.watched.insert(id, path);
        }
        for (id, _) in gone {
            self.watched.remove(&id);
            self.forget_cgroup(id)?;
        }
        // Pods whose cgroup did not exist yet.
        let pending: Vec<Arc<PodInfo>> = self.pending_pods.values().cloned().collect();
        for pod in pending {
            self.place_pod(pod)?;
        }
        Ok(())
    }

    pub(super) fn on_pod(&mut self, change: PodChange) -> Result<()> {
        self.attributor.invalidate();
        match change {
            PodChange::Upsert(pod) => self.place_pod(pod)?,
            PodChange::Removed(uid) => {
                self.pending_pods.remove(&uid);
                self.pods_placed.remove(&uid);
                if let Some(id) = self.pod_cgroups.remove(&uid) {
                    self.forget_cgroup(id)?;
                }
            }
        }
        Ok(())
    }

    /// Enforcement at the pod level, registered before the pod's containers start.
    pub(super) fn place_pod(&mut self, pod: Arc<PodInfo>) -> Result<()> {
        let Some(path) = find_pod_cgroup(&self.mount, &pod.uid) else {
            self.pending_pods.insert(pod.uid.clone(), pod);
            return Ok(());
        };
        self.pending_pods.remove(&pod.uid);
        let id = cgroup_id(&path)?;
        let rel = Path::new("/").join(path.strip_prefix(&self.mount).unwrap_or(&path));
        let who = Arc::new(Attribution { cgroup_id: id, ..Attribution::of_pod(&pod, rel) });
        let eff = self.detector.policy.effective(Some(&who), self.detector.mode_flag);
        if let Some(old) = self.pod_cgroups.insert(pod.uid.clone(), id).filter(|old| *old != id) {
            self.forget_cgroup(old)?;
        }
        self.place(id, &who, &eff)?;
        self.pods_placed.insert(pod.uid.clone(), pod.clone());
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), uid = %pod.uid, user = ?pod.user, mode = %eff.mode, "notebook pod on this node");
        Ok(())
    }
}
