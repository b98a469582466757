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

use anyhow::{bail, Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    clock::BootClock,
    detect::{aggregate::Aggregator, alert::Alert, engine::Detector, rules},
    discovery::{
        attribution::{Attribution, AttributionOptions, Attributor, Source},
        cgroup::{find_cgroup2_mount, CgroupResolver},
        kube::{KubeOptions, PodCache, PodChange, PodInfo},
    },
    enforce::{flags_for, KernelEnforcer},
    policy::{watch::PolicyFile, AutoBool, Mode, Policy},
    process::table::{cmdline, ProcessTable},
    seccomp::drift::DriftWatch,
    sensors::{
        decode::{DecodeError, Event, Exec},
        process::{KernelLosses, ProcessSensor, SensorOptions},
        ring::{Batch, QueueLimit, ReaderStats, RingReader, Spares},
    },
    server::metrics::{AlertLabels, EventCounters, Metrics, SinkLabels},
    sinks::{events::ExecRecord, events::JsonLines, OutputSpec, Sink},
};

mod health;
mod hub;
mod placement;
mod reload;

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
    detector: Detector,
    enforcer: KernelEnforcer,
    sensor: ProcessSensor,
    sinks: Vec<Box<dyn Sink>>,
    aggregator: Aggregator,
    clock: BootClock,
    events: Option<JsonLines<W>>,
    reported_kernel: KernelLosses,
    reported_queue: u64,
    /// Roots whose identities were pushed to the kernel allow-list.
    synced_roots: HashSet<crate::policy::identity::RootKey>,
    /// Watched cgroups found by scanning: path → the id of its current incarnation.
    watched: HashMap<PathBuf, u64>,
    /// Notebook cgroups placed, and under what (`placement::place`).
    placed: crate::IdMap<u64, crate::policy::Effective>,
    /// Notebook pods whose cgroup is not there yet.
    pending_pods: HashMap<String, Arc<PodInfo>>,
    /// Pod UID → its cgroup id (for un-enforcing on delete).
    pod_cgroups: HashMap<String, u64>,
    /// Pods placed, for re-evaluation on policy reload.
    pods_placed: HashMap<String, Arc<PodInfo>>,
    /// Policy generation: egress policy ids are offset by it, so a reload writes its rules
    /// next to the old ones and switches cgroups over only once all are in place.
    generation: u32,
    kube_on: bool,
    watch_all: bool,
    mount: PathBuf,
    proc_root: PathBuf,
    metrics: Arc<Metrics>,
    event_counts: EventCounters,
    /// Egress maps (None when the egress hooks are off).
    egress: Option<crate::sensors::process::EgressMaps>,
    egress_now: crate::IdMap<u64, u32>,
    /// Seccomp drift watch: loaded only while the policy assigns some notebook a profile.
    drift: Option<DriftWatch>,
    btf: PathBuf,
    /// The hubs notebooks are always let reach.
    hub: hub::HubReach,
    /// Stdout for people (`RunOptions::text`).
    text: Option<bool>,
    pub alerts_sent: u64,
}

impl<W: Write> Pipeline<W> {
    /// Decodes and handles a batch from the ring reader, one record at a time, and hands its
    /// emptied buffer back to it.
    fn handle_batch(&mut self, batch: Batch, stats: &ReaderStats, spares: &Spares) -> Result<()> {
        let (n, bytes) = (batch.len(), batch.byte_len());
        for ev in batch.events() {
            match ev {
                Ok(ev) => self.handle(ev)?,
                // What another version's programs left in the adopted ring (an upgrade): counted,
                // and said once, not once per record.
                Err((e @ DecodeError::Format { .. }, len)) => {
                    if stats.other_format.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, len, "dropping records another guard version left in the ring");
                    }
                }
                Err((e, len)) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, len, "malformed ring buffer record");
                }
            }
        }
        spares.give(batch);
        stats.settled(n, bytes);
        Ok(())
    }

    fn handle(&mut self, ev: Event) -> Result<()> {
        let c = &self.event_counts;
        match &ev {
            Event::Exec(_) => c.exec.inc(),
            Event::Fork(_) => c.fork.inc(),
            Event::Exit(_) => c.exit.inc(),
            Event::Egress(_) => c.egress.inc(),
            Event::Socket(_) => c.socket.inc(),
            Event::Cgroup(_) => c.cgroup.inc(),
        };
        match ev {
            Event::Exec(e) => self.on_exec(&e)?,
            Event::Fork(f) => self.table.on_fork(&f),
            Event::Exit(x) => self.table.on_exit(&x),
            Event::Egress(g) => {
                if let Some(who) = self.who(g.meta.cgroup_id, g.meta.tgid) {
                    for a in self.detector.on_egress(&g, &mut self.table, &who) {
                        self.emit(a)?;
                    }
                }
            }
            // Known before anything its processes do: attribution holds even when the cgroup is
            // gone by the time their events are read (a server restarted at once, twice).
            Event::Cgroup(m) => self.attributor.cgroups.learn(m.meta.cgroup_id, m.path),
            Event::Socket(k) => {
                if let Some(who) = self.who(k.meta.cgroup_id, k.meta.tgid) {
                    for a in self.detector.on_socket(&k, &mut self.table, &who) {
                        self.emit(a)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The notebook of a process: by its cgroup, else inherited from a local server.
    fn who(&mut self, cgroup_id: u64, tgid: u32) -> Option<Arc<Attribution>> {
        self.attributor.attribute(cgroup_id, tgid).or_else(|| self.table.get(tgid).and_then(|p| p.notebook.clone()))
    }

    fn poll_drift(&mut self) -> Result<()> {
        let Some(d) = self.drift.as_mut() else { return Ok(()) };
        for drift in d.poll()? {
            if let Some(a) = self.detector.seccomp_drift(&drift) {
                self.emit(a)?;
            }
        }
        Ok(())
    }

    fn on_exec(&mut self, e: &Exec) -> Result<()> {
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
            match self.text {
                Some(color) => out.write_line(&crate::sinks::text::exec_line(&rec, color))?,
                None => out.write(&rec)?,
            }
        }
        let was_local = self.table.get(e.meta.tgid).is_some_and(|p| p.notebook.is_some());
        let outcome = self.detector.on_exec(e, &mut self.table, who.as_ref());
        if let (Some(who), Some(eff)) = (who.as_ref(), outcome.effective) {
            if who.source == Source::LocalProcessSpawner {
                // The server shares the hub's cgroup: it is known by process. Its scope passes
                // to what it starts, in the kernel.
                if let Some(p) = self.table.get_mut(e.meta.tgid) {
                    p.notebook = Some(who.clone());
                }
                if !was_local {
                    self.place_local(e.meta.tgid, who, &eff, outcome.role == crate::process::table::Role::Server)?;
                }
            } else {
                self.place(e.meta.cgroup_id, who, &eff)?;
            }
            if flags_for(&eff).is_some() {
                if let Some(root) = outcome.root.filter(|_| outcome.refreshed) {
                    // A new interpreter (a conda env made at run time): the kernel learns it.
                    self.synced_roots.remove(&root);
                }
                self.enforced_exec(e, outcome.role, outcome.root, outcome.server)?;
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) || (self.events.is_none() && self.sinks.is_empty()) {
            let cmd = self.detector.redactor.text(&cmdline(&e.argv)).into_owned();
            tracing::debug!(pid = e.meta.tgid, exe = %e.filename.display(), cmdline = %cmd, role = ?outcome.role, "exec");
        }
        for a in outcome.alerts {
            self.emit(a)?;
        }
        Ok(())
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

    fn emit(&mut self, alert: Alert) -> Result<()> {
        if let Some(a) = self.aggregator.admit(alert, Instant::now()) {
            self.send(&a);
        }
        Ok(())
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

    fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.events {
            out.flush().context("writing events")?;
        }
        for s in &mut self.sinks {
            if let Err(e) = s.flush() {
                tracing::error!(sink = %s.name(), error = %e, "sink flush failed");
            }
        }
        Ok(())
    }
}

/// Start-up parses the kernel's BTF (for offsets, for the loader's relocations, for the
/// tp_btf socket hook), tens of MiB that are freed before the agent runs; glibc keeps freed memory for reuse, so hand it
/// back to the kernel once instead of carrying it as resident memory for the agent's life.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernel egress policy id of policy `id` in generation `generation`.
fn egress_id(generation: u32, id: u32) -> u32 {
    (generation % 1024) * 1024 + id
}

/// Writes every egress policy's rules into the kernel's LPM trie, under `generation`, with the
/// hub endpoints known so far.
fn load_egress_rules(
    maps: &mut crate::sensors::process::EgressMaps,
    policy: &Policy,
    generation: u32,
    hub: &[hub::Endpoint],
) -> Result<()> {
    let mut n = 0;
    for (id, spec) in policy.egress_policies() {
        let policy_id = egress_id(generation, id);
        for (key, prefix, rule) in
            spec.compile(policy_id).into_iter().chain(crate::policy::egress::hub_entries(policy_id, hub))
        {
            let k = aya::maps::lpm_trie::Key::new(guard_abi::EGRESS_KEY_FIXED_BITS + prefix, key);
            maps.rules.insert(&k, rule, 0).context("loading egress rules")?;
            n += 1;
        }
    }
    tracing::info!(rules = n, "egress policy loaded");
    Ok(())
}

fn kube_enabled(policy: &Policy) -> Result<Option<KubeOptions>> {
    let k = &policy.discovery.kubernetes;
    let on = match k.enabled {
        AutoBool::False => false,
        AutoBool::True => true,
        AutoBool::Auto => {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || std::env::var_os("KUBECONFIG").is_some()
        }
    };
    if !on {
        return Ok(None);
    }
    let node = match k.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()) {
        Some(n) if !n.is_empty() => n,
        _ => bail!("kubernetes discovery needs the node name: set discovery.kubernetes.node_name or $NODE_NAME"),
    };
    Ok(Some(KubeOptions {
        node_name: node,
        label_selector: k.notebook_selector.clone(),
        notebook_container: k.notebook_container.clone(),
    }))
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let policy = Arc::new(opts.policy.clone());
    let kube = kube_enabled(&policy)?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = opts.listen {
        let bound = crate::server::serve(addr, metrics.clone()).await?;
        tracing::info!(%bound, "serving /healthz /readyz /metrics");
    }
    let mut sensor = ProcessSensor::load(&opts.sensor)?;
    let mount = find_cgroup2_mount()?;
    for cg in &opts.watch_cgroups {
        let path = if cg.is_absolute() { cg.clone() } else { mount.join(cg) };
        let id = sensor.watch_cgroup_path(&path)?;
        tracing::info!(cgroup = %path.display(), id, "watching cgroup");
    }
    let enforcer = sensor.take_enforcer().context("enforcement maps already taken")?;
    let egress = match opts.egress {
        true => {
            let mut maps = sensor.attach_egress(&mount).context("attaching the egress hooks")?;
            load_egress_rules(&mut maps, &policy, 1, &[])?;
            Some(maps)
        }
        false => None,
    };
    tracing::info!(programs = ?sensor.program_ids(), pinned = sensor.is_pinned(), "kernel programs attached");

    // Sinks: the policy's outputs and the command line's; stdout when neither names one.
    let mut specs: Vec<OutputSpec> =
        policy.outputs.iter().map(|o| OutputSpec::parse(o)).collect::<Result<_, _>>().context("policy outputs")?;
    specs.extend(opts.outputs.iter().cloned());
    // `--events` adds exec lines to stdout; the alerts stay there.
    if specs.is_empty() {
        specs.push(OutputSpec::Stdout);
    }
    specs.dedup();
    let (sink_stop_tx, sink_stop_rx) = watch::channel(false);
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut sink_workers = Vec::new();
    for s in &specs {
        match s {
            OutputSpec::Stdout => match opts.text {
                Some(color) => sinks.push(Box::new(crate::sinks::text::TextSink::new(color))),
                None => sinks.push(Box::new(crate::sinks::StdoutSink::new())),
            },
            OutputSpec::File { path, max_bytes, keep } => sinks.push(Box::new(
                crate::sinks::file::FileSink::open(path, *max_bytes, *keep)
                    .with_context(|| format!("opening output file {}", path.display()))?,
            )),
            OutputSpec::Net { name, target } => {
                let (sink, worker) = crate::sinks::net::start(
                    name,
                    target,
                    &opts.spool_dir,
                    opts.spool_max_bytes,
                    metrics.clone(),
                    sink_stop_rx.clone(),
                )?;
                sinks.push(sink);
                sink_workers.push(worker);
            }
        }
    }

    // Kubernetes pod watch.
    let pods = kube.as_ref().map(|_| Arc::new(PodCache::default()));
    let (pod_tx, mut pod_rx) = mpsc::channel::<PodChange>(1024);
    if let (Some(k), Some(cache)) = (kube.clone(), pods.clone()) {
        let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
        tokio::spawn(crate::discovery::kube::watch_pods(client, k, cache, pod_tx));
    } else {
        drop(pod_tx);
    }

    let attr_opts = AttributionOptions {
        notebook_container: policy.discovery.kubernetes.notebook_container.clone(),
        tljh: policy.discovery.tljh,
        docker: policy.discovery.docker,
        proc_root: opts.proc_root.clone(),
    };
    let attributor = Attributor::new(CgroupResolver::new(mount.clone())?, pods.clone(), attr_opts);
    let mut detector = Detector::new(policy.clone(), opts.mode_flag, opts.proc_root.clone());
    // Seed after attaching, so no process can slip between the snapshot and the first event;
    // kernels and LocalProcessSpawner servers already running get their notebook as if their
    // exec had been seen.
    let mut table = ProcessTable::with_cgroup_mount(mount.clone());
    let cgroups = &attributor.cgroups;
    let local = |p: &crate::process::table::ProcInfo, environ: &[u8]| {
        let cgroup = cgroups.lookup(p.cgroup_id).unwrap_or_default();
        let server = crate::discovery::attribution::local_server(environ, cgroup)?;
        policy.discovery.local_process.then(|| Arc::new(server))
    };
    table.seed_from_proc(&opts.proc_root, &mut |env| detector.redactor.learn_environ(env), &local);
    let (hub_tx, mut hub_rx) = mpsc::unbounded_channel::<Vec<hub::Endpoint>>();
    let mut pipe = Pipeline {
        table,
        attributor,
        detector,
        enforcer,
        sensor,
        sinks,
        aggregator: Aggregator::new(AGGREGATE_WINDOW),
        clock: BootClock::new(),
        events: opts.events_json.then(|| JsonLines::new(std::io::stdout())),
        reported_kernel: KernelLosses::default(),
        reported_queue: 0,
        synced_roots: HashSet::new(),
        watched: HashMap::new(),
        placed: Default::default(),
        pending_pods: HashMap::new(),
        pod_cgroups: HashMap::new(),
        pods_placed: HashMap::new(),
        generation: 1,
        kube_on: kube.is_some(),
        watch_all: opts.sensor.watch_all,
        mount: mount.clone(),
        proc_root: opts.proc_root.clone(),
        metrics: metrics.clone(),
        event_counts: metrics.event_counters(),
        egress,
        egress_now: Default::default(),
        drift: None,
        btf: opts.sensor.btf_path.clone(),
        hub: hub::HubReach::new(hub_tx),
        text: opts.text,
        alerts_sent: 0,
    };
    metrics.sensors_attached.store(true, Ordering::Relaxed);
    pipe.enforcer.set_kernel_commands(&policy.kernel_commands)?;
    pipe.scan(kube.is_some())?;
    pipe.scope_local_notebooks()?;

    let stats = Arc::new(ReaderStats::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ring = pipe.sensor.take_ring().context("ring buffer already taken")?;
    let polling = pipe.sensor.take_polling_flag().context("polling flag already taken")?;
    let spares = Spares::default();
    let (reader_spares, reader_stats, poll) = (spares.clone(), stats.clone(), opts.poll);
    let reader = RingReader::spawn_thread(
        move || RingReader::new(ring, Some(polling), tx, reader_spares, reader_stats, poll, QUEUE),
        stop_rx,
    )
    .context("starting the ring reader")?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // ConfigMap updates swap a symlink: what the path resolves to is watched.
    let mut config = opts.config.clone();
    let mut config_tick = tokio::time::interval(CONFIG_POLL);
    let hb = policy.heartbeat_seconds;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(if hb == 0 { 3600 * 24 * 365 } else { hb }));
    heartbeat.tick().await;
    let started = pipe.detector.health_alert(
        &rules::GUARD_STARTED,
        &format!(
            "notebook-guard {} started (mode {})",
            env!("CARGO_PKG_VERSION"),
            opts.mode_flag.unwrap_or(policy.mode)
        ),
        &[("guard.version", env!("CARGO_PKG_VERSION").into())],
    );
    pipe.send(&started);
    pipe.flush()?;
    let mut loss_tick = tokio::time::interval(LOSS_CHECK);
    let mut sweep_tick = tokio::time::interval(TABLE_SWEEP);
    let mut scan_tick = tokio::time::interval(SCAN);
    let mut pods_open = pods.is_some();
    let mut tampered: HashSet<String> = HashSet::new();
    release_startup_memory();
    tracing::info!(
        cgroup2 = %mount.display(),
        processes = pipe.table.len(),
        mode = %opts.mode_flag.unwrap_or(policy.mode),
        kubernetes = kube.is_some(),
        "guard running"
    );
    match &opts.sensor.pin_dir {
        Some(dir) => tracing::info!(
            pin_dir = %dir.display(),
            "enforcement is pinned: it keeps running after this agent stops (`guard status` shows it, `guard cleanup --pin-dir {}` ends it)",
            dir.display()
        ),
        None => tracing::info!("enforcement is not pinned: it ends when this agent stops (--pin keeps it running)"),
    }

    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                pipe.handle_batch(batch, &stats, &spares)?;
                while let Ok(batch) = rx.try_recv() {
                    pipe.handle_batch(batch, &stats, &spares)?;
                }
                pipe.flush()?;
            }
            Some(found) = hub_rx.recv() => pipe.allow_hub(found)?,
            change = pod_rx.recv(), if pods_open => {
                match change {
                    Some(c) => pipe.on_pod(c)?,
                    None => pods_open = false,
                }
            }
            _ = loss_tick.tick() => {
                pipe.update_gauges(pods.as_deref());
                for name in pipe.sensor.missing_pins() {
                    if tampered.insert(name.clone()) {
                        tracing::error!(program = %name, "pinned link removed by someone else");
                        let a = pipe.detector.health_alert(
                            &rules::GUARD_TAMPERED,
                            &format!("notebook-guard program {name} was detached (its pin was removed)"),
                            &[("guard.program", name.clone().into())],
                        );
                        pipe.send(&a);
                    }
                }
                pipe.report_losses(pipe.sensor.kernel_losses()?, stats.queue_full.load(Ordering::Relaxed))?;
                pipe.poll_drift()?;
                for a in pipe.aggregator.flush(Instant::now(), false) {
                    pipe.send(&a);
                }
                pipe.flush()?;
            }
            _ = scan_tick.tick() => pipe.scan(kube.is_some())?,
            _ = heartbeat.tick(), if hb > 0 => {
                let a = pipe.detector.health_alert(
                    &rules::GUARD_HEARTBEAT,
                    "notebook-guard heartbeat",
                    &[("guard.notebook_cgroups", (pipe.watched.len() + pipe.pod_cgroups.len()).into()), ("guard.alerts_sent", pipe.alerts_sent.into())],
                );
                pipe.send(&a);
                pipe.flush()?;
            }
            _ = sweep_tick.tick() => {
                let gone = pipe.table.sweep(&opts.proc_root);
                pipe.sweep_dead_cgroups()?;
                tracing::debug!(gone, live = pipe.table.len(), "process table swept");
            }
            _ = sighup.recv() => {
                match config.as_mut() {
                    Some(c) => {
                        let parsed = c.load_now();
                        pipe.reload(c.path(), parsed)?;
                    }
                    None => tracing::warn!("SIGHUP: no --config file to reload (the embedded policy is in force)"),
                }
                pipe.flush()?;
            }
            _ = config_tick.tick(), if config.is_some() => {
                if let Some(c) = config.as_mut() {
                    if let Some(parsed) = c.poll(Instant::now()) {
                        pipe.reload(c.path(), parsed)?;
                        pipe.flush()?;
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    if let (true, Some(dir)) = (pipe.sensor.is_pinned(), opts.sensor.pin_dir.as_ref()) {
        let cgroups = pipe.enforcer.enforced_cgroups();
        tracing::warn!(
            enforced_cgroups = cgroups,
            pin_dir = %dir.display(),
            "stopping: the pinned programs keep enforcing {cgroups} notebook cgroup(s) and their egress after this agent exits; the next agent adopts them. See them with `guard status --pin-dir {0}`, end them with `guard cleanup --pin-dir {0}`",
            dir.display()
        );
    } else {
        tracing::info!("stopping: detaching programs and draining the ring buffer");
    }
    pipe.sensor.detach();
    // Last look at the drift watch, then detach it (it is never left attached).
    pipe.poll_drift()?;
    pipe.drift = None;
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || reader.join())
        .await
        .context("waiting for the ring reader")?
        .map_err(|_| anyhow::anyhow!("the ring reader thread panicked"))?;
    while let Ok(batch) = rx.try_recv() {
        pipe.handle_batch(batch, &stats, &spares)?;
    }
    let kernel = pipe.sensor.kernel_losses()?;
    pipe.report_losses(kernel, stats.queue_full.load(Ordering::Relaxed))?;
    for a in pipe.aggregator.flush(Instant::now(), true) {
        pipe.send(&a);
    }
    let stopped = pipe.detector.health_alert(&rules::GUARD_STOPPED, "notebook-guard stopped", &[]);
    pipe.send(&stopped);
    pipe.flush()?;
    // Network sinks get a few seconds to deliver what is spooled; the rest waits on disk.
    let _ = sink_stop_tx.send(true);
    for w in sink_workers {
        let _ = w.await;
    }
    tracing::info!(
        received = stats.received.load(Ordering::Relaxed),
        alerts = pipe.alerts_sent,
        lost_kernel = kernel.total(),
        lost_queue = stats.queue_full.load(Ordering::Relaxed),
        malformed = stats.malformed.load(Ordering::Relaxed),
        other_format = stats.other_format.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}
