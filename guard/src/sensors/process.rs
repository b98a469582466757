//! The process-lifecycle sensor: `sched_process_exec`, `sched_process_fork` and
//! `sched_process_exit` raw tracepoints feeding one ring buffer, and `cgroup_mkdir`, which
//! gives a notebook cgroup made again at a known path its enforcement before its first exec.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Ebpf, EbpfLoader,
};
use guard_abi::{names, Config, EventKind, EVENT_KINDS};

use super::{
    maps::{EnforcementMaps, MapWrite},
    offsets::OffsetResolver,
    pins::{check_bpffs, maps_dir, pin_link, retire_other_layouts, PINNED_MAPS},
    EBPF_OBJECT,
};

mod network;

/// How the sensor is loaded.
#[derive(Clone, Debug)]
pub struct SensorOptions {
    /// Ring buffer size in bytes: a power of two and a multiple of the page size.
    pub ring_bytes: u32,
    /// Wake the agent only once this many bytes wait (0: wake per record, kernel default).
    pub wakeup_bytes: u64,
    /// Report every cgroup on the node instead of only watched ones.
    pub watch_all: bool,
    /// Kernel BTF used to resolve struct offsets.
    pub btf_path: PathBuf,
    /// bpffs directory where maps and links are pinned, so enforcement outlives the agent and
    /// the next agent adopts it (None: everything goes with the agent).
    pub pin_dir: Option<PathBuf>,
    /// Capacities of the maps written per event (`--map-size`).
    pub map_sizes: super::maps::MapSizes,
}

impl Default for SensorOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 4 << 20,
            wakeup_bytes: 256 << 10,
            watch_all: true,
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            pin_dir: None,
            map_sizes: Default::default(),
        }
    }
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct ProcessSensor {
    ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    /// The programs' failed map writes, by `guard_abi::map_full` slot.
    map_full: PerCpuArray<MapData, u64>,
    watched: HashMap<MapData, u64, u32>,
    /// Mapped only when the reader takes it: its pages count in the agent's RSS twice over
    /// (the kernel maps the data area twice), and start-up's BTF parse should not add to that.
    ring: Option<aya::maps::Map>,
    enforcement: Option<EnforcementMaps>,
    links: Vec<(&'static str, RawTracePointLinkId)>,
    sock_links: Vec<(&'static str, aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId)>,
    sock_create_link: Option<aya::programs::cgroup_sock::CgroupSockLinkId>,
    skb_links: Vec<(&'static str, aya::programs::cgroup_skb::CgroupSkbLinkId)>,
    /// Links pinned in bpffs, by program: they stay attached when the agent exits.
    pinned: Vec<(&'static str, aya::programs::links::PinnedLink)>,
    pin_dir: Option<PathBuf>,
    ring_fill: aya::maps::Array<MapData, u64>,
    polling: Option<aya::maps::Array<MapData, u32>>,
    ring_bytes: u32,
    /// Drift's hook, when the kernel took it.
    drift_link: Option<RawTracePointLinkId>,
}

/// Kernel-side losses, by event kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLosses(pub [u64; EVENT_KINDS as usize]);

impl KernelLosses {
    pub fn get(&self, kind: EventKind) -> u64 {
        self.0[kind as usize]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl ProcessSensor {
    pub fn load(opts: &SensorOptions) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!("this guard was built without its eBPF object: build it with `cargo xtask build`");
        }
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            bail!("ring buffer size {} is not a power of two of at least 4096 bytes", opts.ring_bytes);
        }
        let resolver = OffsetResolver::from_file(&opts.btf_path)
            .context("reading kernel BTF (kernel needs CONFIG_DEBUG_INFO_BTF)")?;
        let offsets = resolver.kernel_offsets().context("resolving kernel struct offsets from BTF")?;
        let config = Config {
            agent_tgid: std::process::id(),
            watch_all: opts.watch_all as u32,
            // A threshold the ring cannot hold would leave a storm to the drain timer alone.
            wakeup_bytes: opts.wakeup_bytes.min(u64::from(opts.ring_bytes) / 4),
            offsets,
            regs: resolver.syscall_regs(),
        };
        // The parsed BTF is large: gone before the loader parses its own copy.
        drop(resolver);
        raise_memlock();
        let mut loader = EbpfLoader::new();
        loader.override_global(names::CONFIG, &config, true).map_max_entries(names::EVENTS, opts.ring_bytes);
        for (map, n) in opts.map_sizes.overrides() {
            loader.map_max_entries(map, n);
        }
        let map_paths: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => {
                check_bpffs(dir)?;
                retire_other_layouts(dir)?;
                let maps = dir.join(maps_dir());
                std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
                super::maps::retire_resized(&maps, &opts.map_sizes)?;
                std::fs::create_dir_all(dir.join("links"))?;
                PINNED_MAPS.iter().map(|m| (*m, maps.join(m))).collect()
            }
            None => vec![],
        };
        // A map already pinned there (a previous agent's) is reused: its state carries over.
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf =
            loader.load(EBPF_OBJECT).context("loading the eBPF object (needs root or CAP_BPF+CAP_PERFMON)")?;
        let mut links = Vec::new();
        let mut pinned = Vec::new();
        for name in [names::PROG_EXEC, names::PROG_FORK, names::PROG_EXIT, names::PROG_CGROUP_MKDIR] {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
            let id = prog.attach(name).with_context(|| format!("attaching raw tracepoint {name}"))?;
            match &opts.pin_dir {
                Some(dir) => {
                    let link: aya::programs::links::FdLink = prog.take_link(id)?.into();
                    pinned.push((name, pin_link(link, &dir.join("links").join(name))?));
                }
                None => links.push((name, id)),
            }
        }
        let drift_link = attach_drift_hook(&mut ebpf);
        let lost = PerCpuArray::try_from(take(&mut ebpf, names::LOST)?)?;
        let map_full = PerCpuArray::try_from(take(&mut ebpf, names::MAP_FULL)?)?;
        let watched = HashMap::try_from(take(&mut ebpf, names::WATCHED)?)?;
        let ring = take(&mut ebpf, names::EVENTS)?;
        let ring_fill = aya::maps::Array::try_from(take(&mut ebpf, names::RING_FILL)?)?;
        let polling = aya::maps::Array::try_from(take(&mut ebpf, names::AGENT_POLLING)?)?;
        let enforcement = EnforcementMaps {
            enforced: HashMap::try_from(take(&mut ebpf, names::ENFORCED)?)?,
            allowed: HashMap::try_from(take(&mut ebpf, names::ALLOWED)?)?,
            marks: HashMap::try_from(take(&mut ebpf, names::MARKS)?)?,
            servers: HashMap::try_from(take(&mut ebpf, names::SERVERS)?)?,
            incarnations: HashMap::try_from(take(&mut ebpf, names::INCARNATIONS)?)?,
            scopes: HashMap::try_from(take(&mut ebpf, names::SCOPES)?)?,
            kernel_commands: HashMap::try_from(take(&mut ebpf, names::KERNEL_COMMANDS)?)?,
            launchers: HashMap::try_from(take(&mut ebpf, names::LAUNCHERS)?)?,
        };
        Ok(Self {
            ebpf,
            lost,
            map_full,
            watched,
            ring: Some(ring),
            enforcement: Some(enforcement),
            links,
            sock_links: Vec::new(),
            sock_create_link: None,
            skb_links: Vec::new(),
            pinned,
            pin_dir: opts.pin_dir.clone(),
            ring_fill,
            polling: Some(polling),
            ring_bytes: opts.ring_bytes,
            drift_link,
        })
    }

    /// Executables changed by notebook processes are reported through the ring (drift);
    /// without it (a kernel that refused the hook) fanotify watches for them instead.
    pub fn drift_hook(&self) -> bool {
        self.drift_link.is_some()
    }

    /// The ring buffer, mapped and handed to the reader once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ring.take().context("ring buffer already taken")?;
        RingBuf::try_from(map).context("mapping the ring buffer")
    }

    /// The reader's "draining on my own timer" flag, handed to the reader once.
    pub fn take_polling_flag(&mut self) -> Option<aya::maps::Array<MapData, u32>> {
        self.polling.take()
    }

    /// The enforcement maps, handed to the enforcer once.
    pub fn take_enforcement_maps(&mut self) -> Option<EnforcementMaps> {
        self.enforcement.take()
    }

    /// Report processes in this cgroup and every cgroup below it.
    pub fn watch_cgroup(&mut self, id: u64) -> Result<()> {
        Ok(self.watched.insert(id, 1, 0).in_map(names::WATCHED, || format!("watching cgroup id {id}"))?)
    }

    pub fn unwatch_cgroup(&mut self, id: u64) -> Result<()> {
        self.watched.remove(&id).with_context(|| format!("unwatching cgroup id {id}"))
    }

    /// Records the kernel could not put in the ring, summed over CPUs.
    pub fn kernel_losses(&self) -> Result<KernelLosses> {
        let mut out = KernelLosses::default();
        for kind in EventKind::ALL {
            let per_cpu = self.lost.get(&(kind as u32), 0).context("reading LOST")?;
            out.0[kind as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Writes the programs could not make, by `guard_abi::map_full` slot, since load.
    pub fn kernel_map_failures(&self) -> Result<[u64; guard_abi::map_full::SLOTS as usize]> {
        let mut out = [0; guard_abi::map_full::SLOTS as usize];
        for (slot, n) in out.iter_mut().enumerate() {
            *n = self.map_full.get(&(slot as u32), 0).context("reading MAP_FULL")?.iter().sum();
        }
        Ok(out)
    }

    /// Pinned links whose pin someone removed (tampering): the programs behind them are no
    /// longer attached once the last reference goes.
    pub fn missing_pins(&self) -> Vec<String> {
        let Some(dir) = &self.pin_dir else { return vec![] };
        self.pinned
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !dir.join("links").join(n).exists())
            .map(str::to_string)
            .collect()
    }

    /// Share of the ring buffer waiting to be read at the last submit (0..1).
    pub fn ring_fill(&self) -> f64 {
        self.ring_fill.get(&0, 0).map(|b| b as f64 / self.ring_bytes as f64).unwrap_or(0.0)
    }

    /// Kernel ids of the loaded programs.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf.programs().filter_map(|(_, p)| p.info().ok().map(|i| i.id())).collect()
    }

    pub fn is_pinned(&self) -> bool {
        self.pin_dir.is_some()
    }

    /// Detaches every program; events already in the ring stay readable. Pinned links stay:
    /// with pinning, enforcement continues after the agent and the next one adopts it.
    pub fn detach(&mut self) {
        if let Some(link) = self.drift_link.take() {
            let name = guard_abi::written::names::PROG_INODE_DIRTY;
            let prog: Option<&mut RawTracePoint> = self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
            if let Some(Err(e)) = prog.map(|p| p.detach(link)) {
                tracing::warn!(program = name, error = %e, "detaching");
            }
        }
        for (name, link) in self.skb_links.drain(..) {
            let prog: Option<&mut aya::programs::CgroupSkb> =
                self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
            if let Some(Err(e)) = prog.map(|p| p.detach(link)) {
                tracing::warn!(program = name, error = %e, "detaching");
            }
        }
        if let Some(link) = self.sock_create_link.take() {
            let prog: Option<&mut aya::programs::CgroupSock> =
                self.ebpf.program_mut(names::PROG_SOCK_CREATE).and_then(|p| p.try_into().ok());
            if let Some(Err(e)) = prog.map(|p| p.detach(link)) {
                tracing::warn!(program = names::PROG_SOCK_CREATE, error = %e, "detaching");
            }
        }
        for (name, link) in self.sock_links.drain(..) {
            let prog: Option<&mut aya::programs::CgroupSockAddr> =
                self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
            if let Some(Err(e)) = prog.map(|p| p.detach(link)) {
                tracing::warn!(program = name, error = %e, "detaching");
            }
        }
        for (name, link) in self.links.drain(..) {
            let prog: Option<&mut RawTracePoint> = self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
            if let Some(Err(e)) = prog.map(|p| p.detach(link)) {
                tracing::warn!(program = name, error = %e, "detaching");
            }
        }
    }
}

/// Attaches drift's hook (`writeback_mark_inode_dirty`): optional, so a kernel that refuses
/// it costs drift its cheap path, not the agent its start. Not pinned: it only observes.
fn attach_drift_hook(ebpf: &mut Ebpf) -> Option<RawTracePointLinkId> {
    let name = guard_abi::written::names::PROG_INODE_DIRTY;
    let attached = (|| -> Result<RawTracePointLinkId> {
        let prog: &mut RawTracePoint =
            ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?.try_into()?;
        prog.load().with_context(|| format!("verifying {name}"))?;
        prog.attach(name).with_context(|| format!("attaching raw tracepoint {name}"))
    })();
    attached
        .map_err(|e| tracing::warn!(error = format!("{e:#}"), "executables made in sessions are watched by fanotify instead (costs every metadata change on their file systems)"))
        .ok()
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
pub(crate) fn raise_memlock() {
    let r = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
}
