//! The agent's health: gauges read each second, and losses reported, never silently.

use std::{
    collections::HashMap,
    io::Write,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Result;
use guard_abi::EventKind;

use super::Pipeline;
use crate::{
    discovery::kube::PodCache,
    policy::rules,
    sensors::{maps::MapWriteError, process::KernelLosses},
    server::metrics::{LossLabels, Stage},
    sinks::events::LostRecord,
};

/// At most one `guard.error` alert per stage this often; the ones between are counted in it.
const ERROR_ALERT_EVERY: Duration = Duration::from_secs(60);

/// Per-stage error alerts said recently: when, and how many since.
#[derive(Default)]
pub(super) struct ErrorLog(HashMap<Stage, (Instant, u64)>);

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

    /// A per-event error: counted by stage, logged, alerted (once a minute per stage, with the
    /// count since), and the agent goes on. Only set-up and shut-down errors stop it: one
    /// notebook filling a kernel map must not silence the node.
    pub(super) fn failed(&mut self, stage: Stage, err: anyhow::Error) {
        self.metrics.error(stage);
        let now = Instant::now();
        let count = match self.errors.0.get_mut(&stage) {
            Some((at, n)) if now.duration_since(*at) < ERROR_ALERT_EVERY => {
                *n += 1;
                tracing::debug!(stage = stage.name(), error = %format!("{err:#}"), "event not handled");
                return;
            }
            Some((at, n)) => {
                *at = now;
                std::mem::replace(n, 0) + 1
            }
            None => {
                self.errors.0.insert(stage, (now, 0));
                1
            }
        };
        tracing::error!(stage = stage.name(), count, error = %format!("{err:#}"), "event not handled; going on");
        let mut fields = vec![
            ("guard.stage", stage.name().into()),
            ("guard.error", format!("{err:#}").into()),
            ("guard.count", count.into()),
        ];
        let mut summary = format!("notebook-guard failed to handle an event ({}): {err:#}", stage.name());
        if let Some(m) = err.chain().find_map(|e| e.downcast_ref::<MapWriteError>()) {
            fields.push(("guard.map", m.map.into()));
            fields.push(("guard.map_full", m.full.into()));
            if let (true, Some(flag)) = (m.full, m.flag()) {
                summary = format!(
                    "notebook-guard's kernel map {} is full ({}): grow it with --map-size {flag}=ENTRIES",
                    m.map, m.what
                );
            }
        }
        let a = self.detector.health_alert(&rules::GUARD_ERROR, &summary, &fields);
        self.send(&a);
    }

    /// Runs `f`, a step of the run loop, counting and alerting its error instead of stopping.
    pub(super) fn guarded(&mut self, stage: Stage, f: impl FnOnce(&mut Self) -> Result<()>) {
        if let Err(e) = f(self) {
            self.failed(stage, e);
        }
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
        // A full fanotify queue drops an unknown number of events: counted as overflows, of
        // persistence writes (`file`) and of metadata changes (`attrib`, drift).
        let overflows: Vec<u64> = self.files.as_ref().map_or(vec![], |w| {
            w.sensors().map(|s| s.stats.overflows.load(std::sync::atomic::Ordering::Relaxed)).collect()
        });
        for (i, (n, event)) in overflows.into_iter().zip(["file", "attrib"]).enumerate() {
            if n > self.reported_file_overflows[i] {
                lost.push(("fanotify", event, n - self.reported_file_overflows[i]));
                self.reported_file_overflows[i] = n;
            }
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

    /// Writes the kernel programs could not make since the last report: a `guard.error`
    /// naming the map and the `--map-size` that grows it (stage `kernel_maps`).
    pub(super) fn report_map_full(&mut self) -> Result<()> {
        let now = self.sensor.kernel_map_failures()?;
        for (slot, map) in guard_abi::map_full::MAPS.iter().enumerate() {
            let new = now[slot].saturating_sub(self.reported_map_full[slot]);
            if new > 0 {
                let e = crate::sensors::maps::MapWriteError::kernel_full(map, new);
                self.failed(Stage::KernelMaps, e.into());
            }
        }
        self.reported_map_full = now;
        Ok(())
    }
}
