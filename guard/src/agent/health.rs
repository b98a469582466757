//! The agent's health: gauges read each second, and losses reported, never silently.

use std::{io::Write, sync::atomic::Ordering};

use anyhow::Result;
use guard_abi::EventKind;

use super::Pipeline;
use crate::{
    detect::rules, discovery::kube::PodCache, sensors::process::KernelLosses, server::metrics::LossLabels,
    sinks::events::LostRecord,
};

impl<W: Write> Pipeline<W> {
    /// Gauges that are cheaper to read than to keep in step.
    pub(super) fn update_gauges(&self, pods: Option<&PodCache>) {
        let m = &self.metrics;
        m.notebooks_watched.set(self.watched.len() as i64 + self.pod_cgroups.len() as i64);
        m.enforced_cgroups.set(self.enforcer.enforced_cgroups() as i64);
        m.processes.set(self.table.len() as i64);
        m.ring_fill.set(self.sensor.ring_fill());
        match pods {
            Some(p) => {
                m.discovery_synced.store(p.synced.load(Ordering::Relaxed), Ordering::Relaxed);
                m.kube_degraded.set(p.degraded.load(Ordering::Relaxed) as i64);
                let errs = p.errors.load(Ordering::Relaxed);
                let seen = m.kube_errors.get();
                if errs > seen {
                    m.kube_errors.inc_by(errs - seen);
                }
            }
            None => m.discovery_synced.store(true, Ordering::Relaxed),
        }
        m.tick();
    }

    /// Reports losses since the last report: a `guard.events_lost` alert (and a `lost` record
    /// on the events feed). Never silent.
    pub(super) fn report_losses(&mut self, kernel: KernelLosses, queue_full: u64) -> Result<()> {
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        let mut lost: Vec<(&'static str, &'static str, u64)> = Vec::new();
        for kind in EventKind::ALL {
            let new = kernel.get(kind) - self.reported_kernel.get(kind);
            if new > 0 {
                lost.push(("kernel", kind.name(), new));
            }
        }
        let q = queue_full - self.reported_queue;
        if q > 0 {
            lost.push(("queue", "any", q));
        }
        for (stage, event, count) in lost {
            tracing::warn!(stage, event, count, "events lost");
            self.metrics.lost.get_or_create(&LossLabels { stage: stage.into(), r#type: event.into() }).inc_by(count);
            if let Some(out) = &mut self.events {
                out.write(&LostRecord { kind: "lost", time: now.clone(), stage, event, count })?;
            }
            let a = self.detector.health_alert(
                &rules::EVENTS_LOST,
                &format!("notebook-guard lost {count} {event} events ({stage})"),
                &[
                    ("guard.lost.stage", stage.into()),
                    ("guard.lost.event", event.into()),
                    ("guard.count", count.into()),
                ],
            );
            self.send(&a);
        }
        self.reported_kernel = kernel;
        self.reported_queue = queue_full;
        Ok(())
    }
}
