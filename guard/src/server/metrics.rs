//! The agent's metrics, registered once with prometheus-client and updated by the pipeline.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub rule: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabels {
    pub stage: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

/// Where the agent can fail on one event and go on (`guard_errors_total{stage}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A ring record that did not decode.
    Decode,
    /// Writing the `--events` feed.
    EventsFeed,
    /// Placing a notebook: its cgroup's enforcement, egress, drift watch, incarnation.
    Placement,
    /// Per-exec enforcement work: allow-list, marks, server registration.
    Enforcement,
    /// Reading the seccomp drift watch.
    Drift,
    /// Looking for notebook cgroups, or a pod change.
    Discovery,
    /// Applying a new policy's kernel state.
    Reload,
    /// Dropping entries of removed cgroups.
    Sweep,
    /// Reading the kernel's loss counters.
    Losses,
    /// Telling a notebook's kernel why something was refused.
    Notice,
    /// Writes the kernel programs make on their own (marks at exec and fork, a notebook cgroup
    /// made again) that did not fit their map.
    KernelMaps,
}

impl Stage {
    pub const ALL: [Stage; 11] = [
        Stage::Decode,
        Stage::EventsFeed,
        Stage::Placement,
        Stage::Enforcement,
        Stage::Drift,
        Stage::Discovery,
        Stage::Reload,
        Stage::Sweep,
        Stage::Losses,
        Stage::Notice,
        Stage::KernelMaps,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::EventsFeed => "events_feed",
            Stage::Placement => "placement",
            Stage::Enforcement => "enforcement",
            Stage::Drift => "drift",
            Stage::Discovery => "discovery",
            Stage::Reload => "reload",
            Stage::Sweep => "sweep",
            Stage::Losses => "losses",
            Stage::Notice => "notice",
            Stage::KernelMaps => "kernel_maps",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub events: Family<TypeLabel, Counter>,
    pub alerts: Family<AlertLabels, Counter>,
    pub lost: Family<LossLabels, Counter>,
    pub errors: Family<StageLabel, Counter>,
    pub notebooks_watched: Gauge,
    pub enforced_cgroups: Gauge,
    pub processes: Gauge,
    pub ring_fill: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub kube_errors: Counter,
    pub kube_degraded: Gauge,
    pub policy_generation: Gauge,
    pub sink_errors: Family<SinkLabels, Counter>,
    pub sink_delivered: Family<SinkLabels, Counter>,
    pub sink_retries: Family<SinkLabels, Counter>,
    pub sink_pending: Family<SinkLabels, Gauge>,
    pub sensors_attached: AtomicBool,
    pub discovery_synced: AtomicBool,
    /// Unix seconds of the pipeline's last tick (liveness).
    pub last_tick: AtomicU64,
}

/// The event counters by type, resolved once: the pipeline counts every event, and a label
/// lookup per event (a String, a hash and a lock) was a few per cent of its CPU in a storm.
#[derive(Clone)]
pub struct EventCounters {
    pub exec: Counter,
    pub fork: Counter,
    pub exit: Counter,
    pub egress: Counter,
    pub socket: Counter,
    pub cgroup: Counter,
    pub file: Counter,
    pub dns: Counter,
    pub fanout: Counter,
    pub stratum: Counter,
    pub written: Counter,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Metrics {
    /// Every type's counter (each is then listed from the start, at 0 until it counts).
    pub fn event_counters(&self) -> EventCounters {
        let of = |t: &str| self.events.get_or_create(&TypeLabel { r#type: t.into() }).clone();
        EventCounters {
            exec: of("exec"),
            fork: of("fork"),
            exit: of("exit"),
            egress: of("egress"),
            socket: of("socket"),
            cgroup: of("cgroup"),
            file: of("file"),
            dns: of("dns"),
            fanout: of("fanout"),
            stratum: of("stratum"),
            written: of("written"),
        }
    }

    pub fn new() -> Self {
        let mut r = Registry::with_prefix("guard");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            events: Family::default(),
            alerts: Family::default(),
            lost: Family::default(),
            errors: Family::default(),
            notebooks_watched: Gauge::default(),
            enforced_cgroups: Gauge::default(),
            processes: Gauge::default(),
            ring_fill: Gauge::default(),
            kube_errors: Counter::default(),
            kube_degraded: Gauge::default(),
            policy_generation: Gauge::default(),
            sink_errors: Family::default(),
            sink_delivered: Family::default(),
            sink_retries: Family::default(),
            sink_pending: Family::default(),
            sensors_attached: AtomicBool::new(false),
            discovery_synced: AtomicBool::new(false),
            last_tick: AtomicU64::new(now()),
        };
        r.register("events", "Kernel events received, by type", m.events.clone());
        r.register("alerts", "Alerts raised, by rule and action", m.alerts.clone());
        r.register("events_lost", "Events lost, by stage (kernel ring, user queue) and type", m.lost.clone());
        r.register("errors", "Events the agent failed to handle and went on, by stage", m.errors.clone());
        // Every counter of a loss or an error is listed from the start at 0: a dashboard's
        // absent() cannot tell "none" from "not exported" otherwise.
        for kind in guard_abi::EventKind::ALL {
            let _ = m.lost.get_or_create(&LossLabels { stage: "kernel".into(), r#type: kind.name().into() });
        }
        let _ = m.lost.get_or_create(&LossLabels { stage: "queue".into(), r#type: "any".into() });
        for t in ["file", "attrib"] {
            let _ = m.lost.get_or_create(&LossLabels { stage: "fanotify".into(), r#type: t.into() });
        }
        for stage in Stage::ALL {
            let _ = m.errors.get_or_create(&StageLabel { stage: stage.name().into() });
        }
        r.register("notebook_cgroups_watched", "Notebook cgroups watched", m.notebooks_watched.clone());
        r.register("enforced_cgroups", "cgroups under kernel enforcement", m.enforced_cgroups.clone());
        r.register("processes_tracked", "Processes in the lineage table", m.processes.clone());
        r.register("ring_buffer_fill_ratio", "Share of the kernel ring buffer waiting to be read", m.ring_fill.clone());
        r.register("kube_watch_errors", "Kubernetes pod watch errors", m.kube_errors.clone());
        r.register(
            "kube_watch_degraded",
            "1 while the pod watch is failing (last state kept)",
            m.kube_degraded.clone(),
        );
        r.register(
            "policy_generation",
            "Policy generation in force (1 at start, +1 per reload)",
            m.policy_generation.clone(),
        );
        r.register("sink_errors", "Delivery errors (alerts rejected or failed writes), by sink", m.sink_errors.clone());
        r.register("sink_delivered", "Alerts delivered, by sink", m.sink_delivered.clone());
        r.register(
            "sink_retries",
            "Delivery attempts that failed and will be retried, by sink",
            m.sink_retries.clone(),
        );
        r.register("sink_spool_bytes", "Bytes spooled on disk awaiting delivery, by sink", m.sink_pending.clone());
        let build: Family<BuildLabels, Gauge> = Family::default();
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), kernel }).set(1);
        r.register("build_info", "Build information", build);
        *m.registry.lock().expect("fresh mutex") = r;
        m.policy_generation.set(1);
        m
    }

    /// A sink's counters, listed at 0 from the moment it exists.
    pub fn register_sink(&self, sink: &str) {
        let l = SinkLabels { sink: sink.into() };
        let _ = self.sink_errors.get_or_create(&l);
        let _ = self.sink_delivered.get_or_create(&l);
        let _ = self.sink_retries.get_or_create(&l);
    }

    pub fn error(&self, stage: Stage) {
        self.errors.get_or_create(&StageLabel { stage: stage.name().into() }).inc();
    }

    pub fn tick(&self) {
        self.last_tick.store(now(), Ordering::Relaxed);
    }

    /// The pipeline ticked within the last 10 seconds.
    pub fn healthy(&self) -> bool {
        now().saturating_sub(self.last_tick.load(Ordering::Relaxed)) <= 10
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = encode(&mut out, &r);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_families_with_labels() {
        let m = Metrics::new();
        m.event_counters().exec.inc();
        m.alerts.get_or_create(&AlertLabels { rule: "notebook.fileless_exec".into(), action: "killed".into() }).inc();
        let text = m.encode();
        assert!(text.contains("guard_events_total{type=\"exec\"} 1"), "{text}");
        assert!(text.contains("guard_events_total{type=\"fork\"} 0"), "{text}");
        assert!(text.contains("guard_alerts_total{rule=\"notebook.fileless_exec\",action=\"killed\"} 1"), "{text}");
        assert!(text.contains("guard_build_info{"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        for line in [
            "guard_events_lost_total{stage=\"kernel\",type=\"exec\"} 0",
            "guard_events_lost_total{stage=\"queue\",type=\"any\"} 0",
            "guard_errors_total{stage=\"placement\"} 0",
            "guard_errors_total{stage=\"decode\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing at start:\n{text}");
        }
    }
}
