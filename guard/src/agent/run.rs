//! `guard run`'s set-up and run loop: load the sensors, discover what runs, start the ring
//! reader, then hand events, pod changes, ticks and signals to the pipeline until told to stop;
//! and stop cleanly (detach, drain, report losses, flush).

use std::{
    collections::{HashMap, HashSet},
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
    detect::{aggregate::Aggregator, engine::Detector},
    discovery::{
        attribution::{AttributionOptions, Attributor},
        cgroup::{find_cgroup2_mount, CgroupResolver},
        kube::{KubeOptions, PodCache, PodChange},
    },
    policy::outputs::OutputSpec,
    policy::rules,
    policy::{AutoBool, Policy},
    process::table::ProcessTable,
    sensors::{
        process::{KernelLosses, ProcessSensor},
        ring::{Batch, ReaderStats, RingReader, Spares},
    },
    server::metrics::{Metrics, Stage},
    sinks::events::JsonLines,
};

use super::{hub, Pipeline, RunOptions, AGGREGATE_WINDOW, CONFIG_POLL, LOSS_CHECK, QUEUE, SCAN, TABLE_SWEEP};

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
    super::memory::tune_allocator();
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
        let id = crate::discovery::cgroup::cgroup_id(&path)?;
        sensor.watch_cgroup(id)?;
        tracing::info!(cgroup = %path.display(), id, "watching cgroup");
    }
    let enforcer =
        crate::enforce::KernelEnforcer::new(sensor.take_enforcement_maps().context("enforcement maps already taken")?);
    let egress_maps = match opts.egress {
        true => Some(sensor.attach_egress(&mount).context("attaching the egress hooks")?),
        false => None,
    };
    let egress = crate::enforce::egress::EgressEnforcer::new(egress_maps, &policy)?;
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
    let (sinks, sink_workers) =
        crate::sinks::build(&specs, opts.text, &opts.spool_dir, opts.spool_max_bytes, &metrics, &sink_stop_rx)?;

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
    let mut detector = Detector::new(policy.clone(), opts.mode_flag);
    let enricher = crate::enrich::Enricher::new(&policy, opts.proc_root.clone());
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
    let (responder, mut response_rx) = crate::respond::hub::HubResponder::start();
    let drift_hook = sensor.drift_hook();
    let mut pipe = Pipeline {
        table,
        attributor,
        enricher,
        detector,
        enforcer,
        sensor,
        sinks,
        aggregator: Aggregator::new(AGGREGATE_WINDOW),
        clock: BootClock::new(),
        events: opts.events_json.then(|| JsonLines::new(std::io::stdout())),
        reported_kernel: KernelLosses::default(),
        reported_map_full: Default::default(),
        reported_queue: 0,
        synced_roots: HashSet::new(),
        watched: Default::default(),
        placed: Default::default(),
        pending_pods: HashMap::new(),
        pod_cgroups: HashMap::new(),
        pods_placed: HashMap::new(),
        kube_on: kube.is_some(),
        watch_all: opts.sensor.watch_all,
        mount: mount.clone(),
        proc_root: opts.proc_root.clone(),
        metrics: metrics.clone(),
        event_counts: metrics.event_counters(),
        egress,
        drift: None,
        btf: opts.sensor.btf_path.clone(),
        hub: hub::HubReach::new(hub_tx),
        text: opts.text,
        errors: Default::default(),
        notifier: crate::respond::notice::Notifier::new(opts.proc_root.clone()),
        files: super::files::start(&policy, drift_hook),
        pending_files: Default::default(),
        deferred_attrib: Default::default(),
        posture: Default::default(),
        reported_file_overflows: [0; 2],
        names: Default::default(),
        responder,
        alerts_sent: 0,
    };
    metrics.sensors_attached.store(true, Ordering::Relaxed);
    pipe.enforcer.set_kernel_commands(&policy.kernel_commands)?;
    pipe.scan(kube.is_some())?;
    pipe.scope_local_notebooks()?;
    pipe.meet_running(true);
    let files_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (file_tx, mut file_rx) = mpsc::unbounded_channel();
    let mut file_readers = Vec::new();
    // Persistence events have a reader thread; drift's are read by the pipeline itself.
    for s in pipe.files.iter().map(|w| w.sensor()) {
        file_readers
            .push(s.spawn_reader(file_tx.clone(), files_stop.clone()).context("starting a file sensor's reader")?);
    }
    drop(file_tx);
    let mut file_tick = tokio::time::interval(super::files::FILE_SETTLE);

    let stats = Arc::new(ReaderStats::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ring = pipe.sensor.take_ring()?;
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
    pipe.flush();
    let mut loss_tick = tokio::time::interval(LOSS_CHECK);
    let mut sweep_tick = tokio::time::interval(TABLE_SWEEP);
    let mut scan_tick = tokio::time::interval(SCAN);
    let mut pods_open = pods.is_some();
    let mut tampered: HashSet<String> = HashSet::new();
    super::memory::release_startup_memory();
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
                // File events read before these records are handled first (a drift lookup
                // asks for the chmods that came before its exec).
                while let Ok(events) = file_rx.try_recv() {
                    pipe.pending_files.push(events, Instant::now());
                }
                pipe.handle_batch(batch, &stats, &spares);
                while let Ok(batch) = rx.try_recv() {
                    pipe.handle_batch(batch, &stats, &spares);
                }
                pipe.flush();
            }
            Some(found) = hub_rx.recv() => pipe.guarded(Stage::Reload, |p| p.allow_hub(found)),
            Some(done) = response_rx.recv() => pipe.answered(done),
            Some(events) = file_rx.recv() => pipe.pending_files.push(events, Instant::now()),
            _ = file_tick.tick() => {
                pipe.read_drift();
                pipe.settle_files(Instant::now());
                pipe.flush();
            }
            change = pod_rx.recv(), if pods_open => {
                match change {
                    Some(c) => pipe.guarded(Stage::Discovery, |p| p.on_pod(c)),
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
                let queue_full = stats.queue_full.load(Ordering::Relaxed);
                pipe.guarded(Stage::Losses, |p| p.report_losses(p.sensor.kernel_losses()?, queue_full));
                pipe.guarded(Stage::Losses, |p| p.report_map_full());
                pipe.guarded(Stage::Drift, |p| p.poll_drift());
                for a in pipe.aggregator.flush(Instant::now(), false) {
                    pipe.send(&a);
                }
                pipe.flush();
            }
            _ = scan_tick.tick() => pipe.guarded(Stage::Discovery, |p| p.scan(kube.is_some())),
            _ = heartbeat.tick(), if hb > 0 => {
                let a = pipe.detector.health_alert(
                    &rules::GUARD_HEARTBEAT,
                    "notebook-guard heartbeat",
                    &[("guard.notebook_cgroups", (pipe.watched.len() + pipe.pod_cgroups.len()).into()), ("guard.alerts_sent", pipe.alerts_sent.into())],
                );
                pipe.send(&a);
                pipe.flush();
            }
            _ = sweep_tick.tick() => {
                let gone = pipe.table.sweep(&opts.proc_root);
                pipe.guarded(Stage::Sweep, |p| p.sweep_dead_cgroups());
                tracing::debug!(gone, live = pipe.table.len(), "process table swept");
            }
            _ = sighup.recv() => {
                match config.as_mut() {
                    Some(c) => {
                        let parsed = c.load_now();
                        pipe.guarded(Stage::Reload, |p| p.reload(c.path(), parsed));
                    }
                    None => tracing::warn!("SIGHUP: no --config file to reload (the embedded policy is in force)"),
                }
                pipe.flush();
            }
            _ = config_tick.tick(), if config.is_some() => {
                if let Some(c) = config.as_mut() {
                    if let Some(parsed) = c.poll(Instant::now()) {
                        pipe.guarded(Stage::Reload, |p| p.reload(c.path(), parsed));
                        pipe.flush();
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
    files_stop.store(true, Ordering::Relaxed);
    for r in file_readers {
        let _ = tokio::task::spawn_blocking(move || r.join()).await;
    }
    while let Ok(events) = file_rx.try_recv() {
        pipe.pending_files.push(events, Instant::now());
    }
    pipe.settle_files(Instant::now() + super::files::FILE_SETTLE);
    // Last look at the drift watch, then detach it (it is never left attached).
    pipe.guarded(Stage::Drift, |p| p.poll_drift());
    pipe.drift = None;
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || reader.join())
        .await
        .context("waiting for the ring reader")?
        .map_err(|_| anyhow::anyhow!("the ring reader thread panicked"))?;
    while let Ok(batch) = rx.try_recv() {
        pipe.handle_batch(batch, &stats, &spares);
    }
    let kernel = pipe.sensor.kernel_losses()?;
    pipe.report_losses(kernel, stats.queue_full.load(Ordering::Relaxed))?;
    pipe.report_map_full()?;
    for a in pipe.aggregator.flush(Instant::now(), true) {
        pipe.send(&a);
    }
    let stopped = pipe.detector.health_alert(&rules::GUARD_STOPPED, "notebook-guard stopped", &[]);
    pipe.send(&stopped);
    pipe.flush();
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
