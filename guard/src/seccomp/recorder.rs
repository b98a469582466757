//! The kernel side of recording: loads the recorder object, registers the cgroups to record,
//! reads their syscall sets. Nothing is attached until [`Recorder::attach`]; dropping the
//! recorder detaches it (the `sys_enter` program must never outlive a recording).

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{tp_btf::BtfTracePointLinkId, BtfTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use guard_abi::{
    names,
    rec_gen::TARGETS_MASK,
    recorder::{MAX_TARGETS, NO_OFFSET},
    RecorderConfig, SyscallSet,
};

use crate::sensors::{offsets::OffsetResolver, RECORDER_OBJECT};

/// x86's TS_COMPAT in `thread_info.status`: the current syscall uses the 32-bit ABI.
const TS_COMPAT: u32 = 0x0002;
/// x86-64's `__USER_CS` (GDT entry 6, ring 3): fixed by the ABI.
const USER_CS: u32 = 0x33;

/// What retires the recorder's per-CPU cache entries, attached with it: (program, tp_btf hook).
const INVALIDATORS: [(&str, &str); 2] =
    [(names::PROG_REC_TASK_CREATED, "sched_process_fork"), (names::PROG_REC_TASK_MOVED, "cgroup_attach_task")];

pub struct Recorder {
    ebpf: Ebpf,
    program: &'static str,
    /// The invalidators to attach with `program` (none for the floor, which caches nothing).
    invalidators: &'static [(&'static str, &'static str)],
    link: Option<BtfTracePointLinkId>,
    invalidator_links: Vec<(&'static str, BtfTracePointLinkId)>,
    targets: HashMap<MapData, u64, u32>,
    cache: HashMap<MapData, u64, u32>,
    generation: Array<MapData, u64>,
    sets: PerCpuArray<MapData, SyscallSet>,
    /// Slot → recorded cgroup id.
    slots: Vec<Option<u64>>,
    /// False when the kernel has no `thread_info.status`: 32-bit calls would be recorded as
    /// native ones, so they are refused rather than misnamed.
    pub compat_known: bool,
}

/// The recorder's `.rodata`: TS_COMPAT's place, and the `pt_regs` fields that tell a native
/// `syscall` without it (x86-64 only; elsewhere every call is native or asks TS_COMPAT).
fn recorder_config(resolver: &OffsetResolver, thread_status: Option<u32>) -> RecorderConfig {
    let mut config = RecorderConfig {
        thread_status: thread_status.unwrap_or(NO_OFFSET),
        compat_mask: TS_COMPAT,
        regs_ip: NO_OFFSET,
        user_cs: USER_CS,
        ..Default::default()
    };
    if !cfg!(target_arch = "x86_64") {
        return config;
    }
    let reg = |name: &str| resolver.field("pt_regs", &[name], 8).ok();
    // `cs` is a u16 in a union since FRED (6.9), an unsigned long before; its low bytes either way.
    let cs = resolver.field("pt_regs", &["cs"], 2).ok().or_else(|| reg("cs"));
    if let (Some(ip), Some(cs), Some(flags), Some(cx), Some(r11)) = (reg("ip"), cs, reg("flags"), reg("cx"), reg("r11"))
    {
        config = RecorderConfig { regs_ip: ip, regs_cs: cs, regs_flags: flags, regs_cx: cx, regs_r11: r11, ..config };
    }
    config
}

impl Recorder {
    /// Loads the recorder (not attached).
    pub fn load(btf: &Path) -> Result<Self> {
        Self::load_program(btf, names::PROG_RECORD, &INVALIDATORS)
    }

    /// Loads the empty `sys_enter` program instead: the floor benchmarks compare against.
    pub fn load_empty(btf: &Path) -> Result<Self> {
        Self::load_program(btf, names::PROG_EMPTY_SYS_ENTER, &[])
    }

    fn load_program(
        btf: &Path,
        program: &'static str,
        invalidators: &'static [(&'static str, &'static str)],
    ) -> Result<Self> {
        if RECORDER_OBJECT.is_empty() {
            bail!("this guard was built without its recorder object: build it with `cargo xtask build`");
        }
        let resolver = OffsetResolver::from_file(btf).context("reading kernel BTF")?;
        // Only x86 has TS_COMPAT; elsewhere the recorder sees native calls only.
        let status = if cfg!(target_arch = "x86_64") {
            resolver.field("task_struct", &["thread_info", "status"], 4).ok()
        } else {
            None
        };
        let config = recorder_config(&resolver, status);
        crate::sensors::process::raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .override_global(names::REC_CONFIG, &config, true)
            .load(RECORDER_OBJECT)
            .context("loading the recorder object (needs root or CAP_BPF+CAP_PERFMON)")?;
        let kernel_btf =
            Btf::parse_file(btf, aya::Endianness::default()).with_context(|| format!("parsing {}", btf.display()))?;
        let prog: &mut BtfTracePoint =
            ebpf.program_mut(program).with_context(|| format!("program {program} missing"))?.try_into()?;
        prog.load("sys_enter", &kernel_btf).with_context(|| format!("verifying {program}"))?;
        for (name, hook) in invalidators {
            let p: &mut BtfTracePoint =
                ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
            p.load(hook, &kernel_btf).with_context(|| format!("verifying {name}"))?;
        }
        let take = |ebpf: &mut Ebpf, n: &str| ebpf.take_map(n).with_context(|| format!("map {n} missing"));
        let targets = HashMap::try_from(take(&mut ebpf, names::REC_TARGETS)?)?;
        let cache = HashMap::try_from(take(&mut ebpf, names::REC_CACHE)?)?;
        let sets = PerCpuArray::try_from(take(&mut ebpf, names::REC_SETS)?)?;
        let generation = Array::try_from(take(&mut ebpf, names::REC_GEN)?)?;
        Ok(Self {
            ebpf,
            program,
            invalidators,
            link: None,
            invalidator_links: Vec::new(),
            targets,
            cache,
            generation,
            sets,
            slots: vec![None; MAX_TARGETS as usize],
            compat_known: status.is_some(),
        })
    }

    /// Attaches the invalidators, then the `sys_enter` program: never the program without them
    /// (its cache would go stale). All or nothing.
    pub fn attach(&mut self) -> Result<()> {
        if self.link.is_some() {
            return Ok(());
        }
        let result = self.attach_all();
        if result.is_err() {
            self.detach();
        }
        result
    }

    fn attach_all(&mut self) -> Result<()> {
        for (name, hook) in self.invalidators {
            let p: &mut BtfTracePoint = self.ebpf.program_mut(name).context("program missing")?.try_into()?;
            let link = p.attach().with_context(|| format!("attaching tp_btf {hook}"))?;
            self.invalidator_links.push((name, link));
        }
        let prog: &mut BtfTracePoint = self.ebpf.program_mut(self.program).context("program missing")?.try_into()?;
        self.link = Some(prog.attach().context("attaching tp_btf sys_enter")?);
        Ok(())
    }

    /// Detaches the `sys_enter` program first, then its invalidators.
    pub fn detach(&mut self) {
        let program = self.program;
        let links = self.link.take().map(|l| (program, l)).into_iter().chain(self.invalidator_links.drain(..).rev());
        for (name, link) in links.collect::<Vec<_>>() {
            if let Some(prog) = self.ebpf.program_mut(name).and_then(|p| <&mut BtfTracePoint>::try_from(p).ok()) {
                let _ = prog.detach(link);
            }
        }
    }

    pub fn is_attached(&self) -> bool {
        self.link.is_some()
    }

    /// Starts recording `cgroup_id` and everything below it, from an empty set. Returns its
    /// slot.
    pub fn add(&mut self, cgroup_id: u64) -> Result<u32> {
        if let Some(s) = self.slot_of(cgroup_id) {
            return Ok(s);
        }
        let slot = self.slots.iter().position(|s| s.is_none()).context("every recording slot is in use")? as u32;
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let empty = aya::maps::PerCpuValues::try_from(vec![SyscallSet::default(); ncpu])?;
        self.sets.set(slot, empty, 0).context("clearing the slot")?;
        self.targets.insert(cgroup_id, slot + 1, 0).context("registering the cgroup")?;
        self.slots[slot as usize] = Some(cgroup_id);
        self.invalidate()?;
        Ok(slot)
    }

    pub fn remove(&mut self, cgroup_id: u64) {
        if let Some(s) = self.slot_of(cgroup_id) {
            let _ = self.targets.remove(&cgroup_id);
            self.slots[s as usize] = None;
            if let Err(e) = self.invalidate() {
                tracing::warn!(error = %format!("{e:#}"), "retiring the recorder's caches");
            }
        }
    }

    pub fn slot_of(&self, cgroup_id: u64) -> Option<u32> {
        self.slots.iter().position(|s| *s == Some(cgroup_id)).map(|p| p as u32)
    }

    /// Forgets every cached cgroup → slot decision: the cgroup-id cache twice (a program that
    /// looked up the targets just before the change may insert its stale answer just after
    /// the first pass), then the per-CPU caches at once, by bumping the generation.
    fn invalidate(&mut self) -> Result<()> {
        for pass in 0..2 {
            let keys: Vec<u64> = self.cache.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                let _ = self.cache.remove(&k);
            }
            if pass == 0 && self.is_attached() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // Only the low half is ours; the kernel bumps the high half (an increment of it lost to
        // this write still leaves the value changed, which is all an entry is checked for).
        let g = self.generation.get(&0, 0).context("reading the recorder generation")?;
        let bumped = (g & !TARGETS_MASK) | (g.wrapping_add(1) & TARGETS_MASK);
        self.generation.set(0, bumped, 0).context("bumping the recorder generation")?;
        Ok(())
    }

    /// The slot's syscall set (the CPUs' copies ORed).
    pub fn read(&self, slot: u32) -> Result<SyscallSet> {
        let per_cpu = self.sets.get(&slot, 0).context("reading a syscall set")?;
        let mut out = SyscallSet::default();
        for s in per_cpu.iter() {
            for (o, w) in out.words.iter_mut().zip(s.words.iter()) {
                *o |= *w;
            }
            out.out_of_range += s.out_of_range;
        }
        Ok(out)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.detach();
    }
}
