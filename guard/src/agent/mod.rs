//! `guard run`: wires the flow — process sensor → decode → enrich (notebook, lineage) →
//! detect / enforce → sinks — and shuts it down cleanly: detach, drain what the kernel already
//! queued, report losses, flush the sinks.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    clock::BootClock,
    detect::{
        aggregate::Aggregator,
        alert::Alert,
        engine::{Detector, Outcome},
    },
    discovery::{
        attribution::{Attribution, Attributor, Source},
        kube::PodInfo,
    },
    enforce::{flags_for, KernelEnforcer},
    enrich::Enricher,
    policy::outputs::OutputSpec,
    policy::{watch::PolicyFile, Mode, Policy},
    process::table::{cmdline, ProcessTable},
    seccomp::drift::DriftWatch,
    sensors::{
        decode::{DecodeError, Event, Exec},
        process::{KernelLosses, ProcessSensor, SensorOptions},
        ring::{Batch, QueueLimit, ReaderStats, Spares},
    },
    server::metrics::{AlertLabels, EventCounters, Metrics, SinkLabels, Stage},
    sinks::{events::ExecRecord, events::JsonLines, Sink},
};

mod allowlist;
mod files;
mod health;
mod hub;
mod memory;
mod network;
mod placement;
mod posture;
mod reload;
mod run;

pub use run::run;

/// What may wait between the ring reader and enrichment: events, and their bytes (about
/// 25000 exec records).
const QUEUE: QueueLimit = QueueLimit { events: 65536, bytes: 32 << 20 };
const LOSS_CHECK: Duration = Duration::from_secs(1);
const TABLE_SWEEP: Duration = Duration::from_secs(60);
/// How often new notebook cgroups (units, scopes, pods' cgroups) are looked for.
const SCAN: Duration = Duration::from_millis(250);
const AGGREGATE_WINDOW: Duration = Duration::from_secs(10);
/// How often the policy file is looked at; a change is loaded once it has held still for
/// `policy::watch::SETTLE`.
const CONFIG_POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub sensor: SensorOptions,
    /// Print every exec on stdout (the raw sensor feed).
    pub events_json: bool,
    /// Stdout (alerts, and exec lines with `events_json`) as lines for people, not JSON;
    /// `Some(true)` with colours.
    pub text: Option<bool>,
    /// Extra cgroups to watch (and below).
    pub watch_cgroups: Vec<PathBuf>,
    /// How often the ring is drained when the kernel did not wake us.
    pub poll: Duration,
    pub proc_root: PathBuf,
    pub policy: Policy,
    /// `--mode`: wins over the policy's modes.
    pub mode_flag: Option<Mode>,
    /// Outputs from the command line (added to the policy's).
    pub outputs: Vec<OutputSpec>,
    /// Serve /healthz, /readyz and /metrics here.
    pub listen: Option<std::net::SocketAddr>,
    /// Attach the egress hooks.
    pub egress: bool,
    /// The policy file `policy` was read from, reloaded on SIGHUP and when it changes
    /// (ConfigMap updates, edits).
    pub config: Option<PolicyFile>,
    /// Where network sinks spool undelivered alerts.
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            sensor: SensorOptions::default(),
            events_json: false,
            text: None,
            watch_cgroups: Vec::new(),
            poll: Duration::from_millis(2),
            proc_root: PathBuf::from("/proc"),
            policy: Policy::default_policy(),
            mode_flag: None,
            outputs: Vec::new(),
            listen: None,
            egress: true,
            config: None,
            spool_dir: PathBuf::from("/var/lib/notebook-guard/spool"),
            spool_max_bytes: 64 << 20,
        }
    }
}

struct Pipeline<W: Write> {
    table: ProcessTable,
    attributor: Attributor,
    enricher: Enricher,
    detector: Detector,
    enforcer: KernelEnforcer,
    sensor: ProcessSensor,
    sinks: Vec<Box<dyn Sink>>,
    aggregator: Aggregator,
    clock: BootClock,
    events: Option<JsonLines<W>>,
    reported_kernel: KernelLosses,
    /// The programs' failed map writes already reported, by `guard_abi::map_full` slot.
    reported_map_full: [u64; guard_abi::map_full::SLOTS as usize],
    reported_queue: u64,
    /// Roots whose identities were pushed to the kernel allow-list.
    synced_roots: HashSet<crate::policy::identity::RootKey>,
    /// Watched cgroups found by scanning: path → the id of its current incarnation.
    /// Notebook cgroups found by the scan: id → path.
    watched: crate::IdMap<u64, PathBuf>,
    /// Notebook cgroups placed, and under what (`placement::place`).
    placed: crate::IdMap<u64, crate::policy::Effective>,
    /// Notebook pods whose cgroup is not there yet.
    pending_pods: HashMap<String, Arc<PodInfo>>,
    /// Pod UID → its cgroup id (for un-enforcing on delete).
    pod_cgroups: HashMap<String, u64>,
    /// Pods placed, for re-evaluation on policy reload.
    pods_placed: HashMap<String, Arc<PodInfo>>,
    kube_on: bool,
    watch_all: bool,
    mount: PathBuf,
    proc_root: PathBuf,
    metrics: Arc<Metrics>,
    event_counts: EventCounters,
    /// Egress enforcement (a no-op when the egress hooks are off).
    egress: crate::enforce::egress::EgressEnforcer,
    /// Seccomp drift watch: loaded only while the policy assigns some notebook a profile.
    drift: Option<DriftWatch>,
    btf: PathBuf,
    /// The hubs notebooks are always let reach.
    hub: hub::HubReach,
    /// Stdout for people (`RunOptions::text`).
    text: Option<bool>,
    /// Per-event errors alerted recently, by stage.
    errors: health::ErrorLog,
    /// The notebook user's notice of a refusal.
    notifier: crate::respond::notice::Notifier,
    /// Persistence locations watched (None: no fanotify here).
    files: Option<crate::enrich::persistence::Watcher>,
    pending_files: files::PendingFiles,
    /// Metadata changes whose writer has not reached the table yet.
    deferred_attrib: std::collections::VecDeque<(Instant, crate::sensors::files::FileEvent)>,
    /// Posture findings each notebook was told.
    posture: crate::detect::engine::posture::PostureBook,
    /// Answers through JupyterHub (policy `response`).
    responder: crate::respond::hub::HubResponder,
    /// Names of destinations, from the DNS answers notebooks received.
    names: crate::enrich::names::Names,
    /// Overflows reported, per fanotify group (persistence, drift).
    reported_file_overflows: [u64; 2],
    pub alerts_sent: u64,
}

impl<W: Write> Pipeline<W> {
    /// Decodes and handles a batch from the ring reader, one record at a time, and hands its
    /// emptied buffer back to it.
    fn handle_batch(&mut self, batch: Batch, stats: &ReaderStats, spares: &Spares) {
        let (n, bytes) = (batch.len(), batch.byte_len());
        for ev in batch.events() {
            match ev {
                Ok(ev) => self.handle(ev),
                // What another version's programs left in the adopted ring (an upgrade): counted,
                // and said once, not once per record.
                Err((e @ DecodeError::Format { .. }, len)) => {
                    if stats.other_format.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, len, "dropping records another guard version left in the ring");
                    }
                }
                Err((e, len)) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.failed(Stage::Decode, anyhow::Error::new(e).context(format!("a {len}-byte ring record")));
                }
            }
        }
        spares.give(batch);
        stats.settled(n, bytes);
    }

    fn handle(&mut self, ev: Event) {
        let c = &self.event_counts;
        match &ev {
            Event::Exec(_) => c.exec.inc(),
            Event::Fork(_) => c.fork.inc(),
            Event::Exit(_) => c.exit.inc(),
            Event::Egress(_) => c.egress.inc(),
            Event::Socket(_) => c.socket.inc(),
            Event::Cgroup(_) => c.cgroup.inc(),
            Event::Dns(_) => c.dns.inc(),
            Event::Fanout(_) => c.fanout.inc(),
            Event::Stratum(_) => c.stratum.inc(),
            Event::Written(_) => c.written.inc(),
        };
        match ev {
            Event::Exec(e) => self.on_exec(&e),
            Event::Fork(f) => self.table.on_fork(&f),
            Event::Exit(x) => self.table.on_exit(&x),
            Event::Dns(d) => self.names.learn(&d),
            Event::Stratum(m) => self.on_stratum(m),
            Event::Written(w) => self.on_written(&w),
            Event::Fanout(f) => self.on_fanout(f),
            Event::Egress(g) => self.on_egress(g),
            // Known before anything its processes do: attribution holds even when the cgroup is
            // gone by the time their events are read (a server restarted at once, twice).
            Event::Cgroup(m) => self.attributor.cgroups.learn(m.meta.cgroup_id, m.path),
            Event::Socket(k) => self.on_socket(k),
        }
    }

    /// The notebook of a process: by its cgroup, else inherited from a local server.
    fn who(&mut self, cgroup_id: u64, tgid: u32) -> Option<Arc<Attribution>> {
        self.attributor.attribute(cgroup_id, tgid).or_else(|| self.table.get(tgid).and_then(|p| p.notebook.clone()))
    }

    fn poll_drift(&mut self) -> Result<()> {
        let Some(d) = self.drift.as_mut() else { return Ok(()) };
        for drift in d.poll()? {
            if let Some(a) = self.detector.seccomp_drift(&drift) {
                self.emit(a);
            }
        }
        Ok(())
    }

    /// One exec through the stages. What fails here is counted and alerted by stage; the
    /// exec's alerts still go out.
    fn on_exec(&mut self, e: &Exec) {
        let mut who = self.attributor.attribute(e.meta.cgroup_id, e.meta.tgid);
        if who.is_none() && self.detector.policy.discovery.local_process {
            who = self.local_notebook(e);
        }
        if let Some(out) = &mut self.events {
            self.table.ensure(&self.proc_root, e.ppid);
            let lineage = self.table.lineage(e.ppid);
            let cgroup = self.attributor.cgroups.resolve(e.meta.cgroup_id);
            let mut rec = ExecRecord::new(e, &lineage, cgroup.as_ref(), self.clock.rfc3339(e.meta.ktime_ns));
            rec.argv = self.detector.redactor.argv(&rec.argv);
            let written = match self.text {
                Some(color) => out.write_line(&crate::sinks::text::exec_line(&rec, color)),
                None => out.write(&rec),
            };
            if let Err(err) = written {
                self.failed(Stage::EventsFeed, anyhow::Error::new(err).context("writing an exec to the events feed"));
            }
        }
        let was_local = self.table.get(e.meta.tgid).is_some_and(|p| p.notebook.is_some());
        if who.is_some() {
            self.take_in_drift(e);
        }
        // Enrich (lineage for every exec; facts for one in a notebook), then judge.
        let eff = who.as_ref().map(|w| self.detector.effective(w));
        let policy = self.detector.policy.clone();
        let facts = self.enricher.exec(e, &mut self.table, who.as_deref(), &policy);
        let (outcome, root) = match (facts, eff.as_ref()) {
            (Some(mut f), Some(eff)) => {
                if let Some(w) = &self.files {
                    f.made = w.drift_of(&f);
                }
                let outcome = self.detector.on_exec(&mut f, &mut self.table, eff);
                (outcome, Some((f.root, f.refreshed)))
            }
            _ => (Outcome::default(), None),
        };
        if root.is_some() {
            let redactor = &mut self.detector.redactor;
            self.enricher.settle(e, outcome.role, &mut self.table, &mut |env| redactor.learn_environ(env));
        }
        if let (Some(who), Some(eff)) = (who.as_ref(), eff) {
            if who.source == Source::LocalProcessSpawner {
                // The server shares the hub's cgroup: it is known by process. Its scope passes
                // to what it starts, in the kernel.
                if let Some(p) = self.table.get_mut(e.meta.tgid) {
                    p.notebook = Some(who.clone());
                }
                if !was_local {
                    let server = outcome.role == crate::process::table::Role::Server;
                    if let Err(err) = self.place_local(e.meta.tgid, who, &eff, server) {
                        self.failed(Stage::Placement, err);
                    }
                }
            } else if let Err(err) = self.place(e.meta.cgroup_id, who, &eff) {
                self.failed(Stage::Placement, err);
            }
            if flags_for(&eff).is_some() {
                if let Some((root, true)) = root {
                    // A new interpreter (a conda env made at run time): the kernel learns it.
                    self.synced_roots.remove(&root);
                }
                if let Err(err) = self.enforced_exec(e, outcome.role, root.map(|r| r.0), outcome.server) {
                    self.failed(Stage::Enforcement, err);
                }
            }
        }
        if let Some(who) = who.as_ref() {
            self.watch_files(e.meta.tgid, &e.filename, outcome.role, who);
            self.check_posture(e.meta.tgid, outcome.role, &e.argv, who);
        }
        if tracing::enabled!(tracing::Level::DEBUG) || (self.events.is_none() && self.sinks.is_empty()) {
            let cmd = self.detector.redactor.text(&cmdline(&e.argv)).into_owned();
            tracing::debug!(pid = e.meta.tgid, exe = %e.filename.display(), cmdline = %cmd, role = ?outcome.role, "exec");
        }
        for a in outcome.alerts {
            self.respond(a);
        }
    }

    /// An alert's responses: the notebook user's notice of a refusal, then the feed.
    fn respond(&mut self, a: Alert) {
        if let Err(e) = self.notifier.refused(&a, &self.table, &self.detector.policy.notice) {
            self.failed(Stage::Notice, anyhow::Error::new(e).context("writing a notice to a notebook's kernel"));
        }
        self.responder.consider(&a, &self.detector.policy, Instant::now());
        self.emit(a);
    }

    /// LocalProcessSpawner: the notebook inherited from an ancestor server, or this exec is
    /// such a server (Python running jupyterhub-singleuser with JUPYTERHUB_USER set).
    fn local_notebook(&mut self, e: &Exec) -> Option<Arc<Attribution>> {
        let inherited = self.table.get(e.meta.tgid).and_then(|p| p.notebook.clone());
        if inherited.is_some() {
            return inherited;
        }
        let argv: Vec<String> = e.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        if !argv.iter().take(3).any(|a| a.ends_with("jupyterhub-singleuser")) {
            return None;
        }
        let environ = std::fs::read(self.proc_root.join(e.meta.tgid.to_string()).join("environ")).ok()?;
        let cgroup = self.attributor.cgroups.resolve(e.meta.cgroup_id).unwrap_or_default();
        let who = Arc::new(crate::discovery::attribution::local_server(&environ, cgroup)?);
        self.detector.redactor.learn_environ(&environ);
        tracing::info!(user = ?who.user, pid = e.meta.tgid, "local notebook server");
        Some(who)
    }

    fn emit(&mut self, alert: Alert) {
        if let Some(a) = self.aggregator.admit(alert, Instant::now()) {
            self.send(&a);
        }
    }

    fn send(&mut self, a: &Alert) {
        self.alerts_sent += 1;
        let action = a.field_str("guard.action").unwrap_or("alert").to_string();
        self.metrics.alerts.get_or_create(&AlertLabels { rule: a.rule.to_string(), action }).inc();
        for s in &mut self.sinks {
            if let Err(e) = s.send(a) {
                self.metrics.sink_errors.get_or_create(&SinkLabels { sink: s.name() }).inc();
                tracing::error!(sink = %s.name(), error = %e, "sink failed");
            }
        }
    }

    fn flush(&mut self) {
        if let Some(Err(err)) = self.events.as_mut().map(|out| out.flush()) {
            self.failed(Stage::EventsFeed, anyhow::Error::new(err).context("writing the events feed"));
        }
        for s in &mut self.sinks {
            if let Err(e) = s.flush() {
                tracing::error!(sink = %s.name(), error = %e, "sink flush failed");
            }
        }
    }
}
