//! `guard run`: wires the flow — process sensor → decode → enrich (cgroup, lineage) → output —
//! and shuts it down cleanly: detach, drain what the kernel already queued, report losses.

use std::{
    io::Write,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    clock::BootClock,
    discovery::cgroup::{find_cgroup2_mount, CgroupResolver},
    process::table::{cmdline, ProcessTable},
    sensors::{
        decode::Event,
        process::{KernelLosses, ProcessSensor, SensorOptions},
        ring::{ReaderStats, RingReader},
    },
    sinks::events::{ExecRecord, JsonLines, LostRecord},
};
use guard_abi::EventKind;

/// Events waiting between the ring reader and enrichment.
const QUEUE_LEN: usize = 65536;
const LOSS_CHECK: Duration = Duration::from_secs(1);
const TABLE_SWEEP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub sensor: SensorOptions,
    /// Print every exec as a JSON line on stdout.
    pub events_json: bool,
    /// Restrict reporting to these cgroups (and below); empty: the whole node.
    pub watch_cgroups: Vec<PathBuf>,
    /// How often the ring is drained when the kernel did not wake us.
    pub poll: Duration,
    pub proc_root: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            sensor: SensorOptions::default(),
            events_json: false,
            watch_cgroups: Vec::new(),
            poll: Duration::from_millis(5),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

struct Pipeline<W: Write> {
    table: ProcessTable,
    cgroups: CgroupResolver,
    clock: BootClock,
    out: Option<JsonLines<W>>,
    reported_kernel: KernelLosses,
    reported_queue: u64,
}

impl<W: Write> Pipeline<W> {
    fn handle(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Exec(e) => {
                let lineage = self.table.on_exec(&e);
                let cgroup = self.cgroups.resolve(e.meta.cgroup_id);
                let time = self.clock.rfc3339(e.meta.ktime_ns);
                if let Some(out) = &mut self.out {
                    out.write(&ExecRecord::new(&e, &lineage, cgroup.as_ref(), time))?;
                } else {
                    tracing::info!(
                        pid = e.meta.tgid,
                        ppid = e.ppid,
                        uid = e.uid,
                        exe = %e.filename.display(),
                        cmdline = %cmdline(&e.argv),
                        parent_exe = %lineage.parent.as_ref().and_then(|p| p.exe.as_ref()).map(|p| p.display().to_string()).unwrap_or_default(),
                        parent_cmdline = %lineage.parent.as_ref().map(|p| cmdline(&p.argv)).unwrap_or_default(),
                        cgroup = %cgroup.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                        "exec"
                    );
                }
            }
            Event::Fork(f) => self.table.on_fork(&f),
            Event::Exit(x) => self.table.on_exit(&x),
        }
        Ok(())
    }

    /// Reports losses since the last report: a JSON `lost` record and a warning. Never silent.
    fn report_losses(&mut self, kernel: KernelLosses, queue_full: u64) -> Result<()> {
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        for kind in EventKind::ALL {
            let new = kernel.get(kind) - self.reported_kernel.get(kind);
            if new > 0 {
                tracing::warn!(
                    event = kind.name(),
                    count = new,
                    "kernel ring buffer full: events lost"
                );
                if let Some(out) = &mut self.out {
                    out.write(&LostRecord {
                        kind: "lost",
                        time: now.clone(),
                        stage: "kernel",
                        event: kind.name(),
                        count: new,
                    })?;
                }
            }
        }
        let q = queue_full - self.reported_queue;
        if q > 0 {
            tracing::warn!(count = q, "user-space event queue full: events lost");
            if let Some(out) = &mut self.out {
                out.write(&LostRecord {
                    kind: "lost",
                    time: now,
                    stage: "queue",
                    event: "any",
                    count: q,
                })?;
            }
        }
        self.reported_kernel = kernel;
        self.reported_queue = queue_full;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            out.flush().context("writing events")?;
        }
        Ok(())
    }
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let mut sensor = ProcessSensor::load(&opts.sensor)?;
    let mount = find_cgroup2_mount()?;
    for cg in &opts.watch_cgroups {
        let path = if cg.is_absolute() {
            cg.clone()
        } else {
            mount.join(cg)
        };
        let id = sensor.watch_cgroup_path(&path)?;
        tracing::info!(cgroup = %path.display(), id, "watching cgroup");
    }
    // Seed after attaching, so no process can slip between the snapshot and the first event.
    let mut table = ProcessTable::new();
    table.seed_from_proc(&opts.proc_root);
    let mut pipe = Pipeline {
        table,
        cgroups: CgroupResolver::new(mount.clone())?,
        clock: BootClock::new(),
        out: opts.events_json.then(|| JsonLines::new(std::io::stdout())),
        reported_kernel: KernelLosses::default(),
        reported_queue: 0,
    };

    let stats = Arc::new(ReaderStats::default());
    let (tx, mut rx) = mpsc::channel(QUEUE_LEN);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ring = sensor.take_ring().context("ring buffer already taken")?;
    let reader = RingReader::new(ring, tx, stats.clone(), opts.poll)?;
    let reader = tokio::spawn(reader.run(stop_rx));

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut loss_tick = tokio::time::interval(LOSS_CHECK);
    let mut sweep_tick = tokio::time::interval(TABLE_SWEEP);
    tracing::info!(cgroup2 = %mount.display(), processes = pipe.table.len(), "guard running");

    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                pipe.handle(ev)?;
                while let Ok(ev) = rx.try_recv() {
                    pipe.handle(ev)?;
                }
                pipe.flush()?;
            }
            _ = loss_tick.tick() => {
                pipe.report_losses(sensor.kernel_losses()?, stats.queue_full.load(Ordering::Relaxed))?;
                pipe.flush()?;
            }
            _ = sweep_tick.tick() => {
                let gone = pipe.table.sweep(&opts.proc_root);
                tracing::debug!(gone, live = pipe.table.len(), "process table swept");
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    tracing::info!("stopping: detaching programs and draining the ring buffer");
    sensor.detach();
    let _ = stop_tx.send(true);
    reader.await.context("ring reader task")?;
    while let Ok(ev) = rx.try_recv() {
        pipe.handle(ev)?;
    }
    let kernel = sensor.kernel_losses()?;
    pipe.report_losses(kernel, stats.queue_full.load(Ordering::Relaxed))?;
    pipe.flush()?;
    tracing::info!(
        received = stats.received.load(Ordering::Relaxed),
        lost_kernel = kernel.total(),
        lost_queue = stats.queue_full.load(Ordering::Relaxed),
        malformed = stats.malformed.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}
