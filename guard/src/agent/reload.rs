//! Policy reload: a new policy swapped in whole, without a gap in enforcement.

use std::{io::Write, sync::Arc};

use anyhow::Result;

use super::Pipeline;
use crate::{
    discovery::kube::PodInfo,
    policy::rules,
    policy::{Policy, PolicyError},
    server::metrics::Stage,
};

impl<W: Write> Pipeline<W> {
    /// Swaps in a new policy without a gap: new egress rules are written beside the old ones,
    /// every known notebook is re-evaluated (mode, allowances, egress) and switched over, and
    /// only then are the old rules removed. A policy that does not parse changes nothing.
    pub(super) fn reload(&mut self, path: &std::path::Path, parsed: Result<Policy, PolicyError>) -> Result<()> {
        let new = match parsed {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(error = %e, "policy rejected; the previous one stays in force");
                let a = self.detector.health_alert(
                    &rules::POLICY_REJECTED,
                    &format!("policy rejected, previous one kept: {e}"),
                    &[("guard.error", e.to_string().into())],
                );
                self.send(&a);
                return Ok(());
            }
        };
        let hub: Vec<_> = self.hub.known.iter().copied().collect();
        self.egress
            .begin_reload(&new, &hub)
            .map_err(|e| e.context("policy not applied; the previous one stays in force"))?;
        let new_gen = self.egress.generation();
        let old_policy = self.detector.policy.clone();
        self.detector.set_policy(new.clone());
        self.enricher.set_policy(&new);
        self.reload_files(&new);
        self.synced_roots.clear();
        // From here the new policy is in force: a notebook that cannot be placed under it is
        // counted and alerted, and the others are still switched over.
        if let Err(e) = self.enforcer.set_kernel_commands(&new.kernel_commands) {
            self.failed(Stage::Reload, e);
        }
        self.attributor.invalidate();
        // Re-place every notebook we know of under the new policy: units and scopes are
        // found again by a scan, pods are placed again, the rest by their cached attribution.
        let known: Vec<u64> = self.placed.keys().copied().collect();
        self.placed.clear();
        self.enforcer.forget_incarnations();
        self.watched.clear();
        let kube_on = self.kube_on;
        self.guarded(Stage::Reload, |p| p.scan(kube_on));
        let pods: Vec<Arc<PodInfo>> = self.pods_placed.values().cloned().collect();
        for pod in pods {
            self.guarded(Stage::Reload, |p| p.place_pod(pod));
        }
        for id in known {
            if let Some(who) = self.attributor.attribute(id, 0) {
                let eff = new.effective(Some(&who), self.detector.mode_flag);
                self.guarded(Stage::Reload, |p| p.place(id, &who, &eff));
            }
        }
        self.guarded(Stage::Reload, |p| p.scope_local_notebooks());
        if !new.any_seccomp_profile() && self.drift.take().is_some() {
            tracing::info!("no seccomp profile assigned any more: drift watch detached");
        }
        self.egress.finish_reload(&old_policy, &hub);
        self.metrics.policy_generation.set(new_gen as i64);
        tracing::info!(generation = new_gen, path = %path.display(), "policy reloaded");
        let a = self.detector.health_alert(
            &rules::POLICY_RELOADED,
            &format!("policy reloaded from {} (generation {new_gen})", path.display()),
            &[("guard.policy_generation", new_gen.into())],
        );
        self.send(&a);
        Ok(())
    }
}
