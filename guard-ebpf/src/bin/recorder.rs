//! notebook-guard seccomp recorder.
//!
//! A BTF tracepoint on `sys_enter` that keeps, per recorded cgroup, one bit per syscall number
//! and architecture: no event per syscall, a bit is written only the first time. It is a
//! separate object so that the always-on sensor never carries a `sys_enter` program; the agent
//! attaches this one only while a recording or a drift watch runs.
//!
//! Cost per syscall on the node matters more than anything else here. The common case (the
//! same task keeps making calls on a CPU, in a cgroup not recorded) costs two inlined array
//! lookups and no helper call: a per-CPU cache keyed by the address of the task's saved
//! registers, which `sys_enter` is given and which is the task's own for its life. It also
//! remembers the last call recorded, so a call repeated in a loop does not touch the bitmap.
//! What could make an entry wrong retires them all: a new task (it may reuse a dead task's
//! kernel stack, and so its address) and a task moving cgroup, by two small programs on
//! `sched_process_fork` and `cgroup_attach_task`; a change of targets, by user space. On a miss
//! the cgroup id is looked up in `REC_CACHE`, and only for a cgroup never seen before are its
//! ancestors walked. A recorded task's calls cost no helper call either, unless they use the
//! 32-bit ABI (see `syscall_insn`).
//!
//! One window is left: a task moved by another process may make a few calls between its move
//! and the tracepoint that follows it, still counted for its old cgroup. Moves into a recorded
//! cgroup that the task makes itself (runc, a shell writing `cgroup.procs`) have no window:
//! the tracepoint fires before the move's write returns.
#![no_std]
#![no_main]
// The BPF target has no `Atomic*::fetch_add`; the intrinsic lowers to BPF's atomic add (the BPF
// build enables features; a host `cargo check` uses the stable API instead).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[path = "../cgroup.rs"]
mod cgroup;
#[path = "../rt.rs"]
mod rt;

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated::bpf_get_current_task_btf},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use guard_abi::{
    rec_gen::TASKS_GENERATION_ONE,
    recorder::{
        ARCHES, ARCH_COMPAT, ARCH_NATIVE, ARCH_X32, CACHE_ENTRIES, MAX_TARGETS, NO_OFFSET, SYSCALL_BITS, WORDS,
        X32_SYSCALL_BIT,
    },
    RecorderConfig, RecorderCpuCache, SyscallSet,
};

#[no_mangle]
static REC_CONFIG: RecorderConfig = RecorderConfig {
    thread_status: NO_OFFSET,
    compat_mask: 0,
    regs_ip: NO_OFFSET,
    regs_cs: 0,
    regs_flags: 0,
    regs_cx: 0,
    regs_r11: 0,
    user_cs: 0,
};

/// Recorded cgroups (and everything below them): cgroup id → slot + 1.
#[map]
static REC_TARGETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Every cgroup seen so far → slot + 1, or 0 when it is not recorded. The agent clears it when
/// `REC_TARGETS` changes.
#[map]
static REC_CACHE: LruHashMap<u64, u32> = LruHashMap::with_max_entries(CACHE_ENTRIES, 0);

/// Per CPU: the last task seen (by its registers' address) and its slot.
#[map]
static REC_CPU: PerCpuArray<RecorderCpuCache> = PerCpuArray::with_max_entries(1, 0);

/// The generation of what the cached entries assumed (see `guard_abi::rec_gen`): bumped by the
/// agent after `REC_TARGETS` and `REC_CACHE` change, and here when a task is created or moves,
/// so every CPU's cached entry is retired at once.
#[map]
static REC_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// The syscall sets, by slot; per CPU, so setting a bit needs no atomic operation and no cache
/// line moves between CPUs. User space ORs the CPUs' copies.
#[map]
static REC_SETS: PerCpuArray<SyscallSet> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

macro_rules! conf {
    ($f:ident) => {{
        // Volatile: patched into .rodata at load time (and a known constant to the verifier).
        // SAFETY: a static in .rodata, always valid to read.
        let v = unsafe { core::ptr::read_volatile(&REC_CONFIG.$f) };
        v
    }};
}

/// This CPU's cache entry, brought up to date for the current task (known by `regs`): `slot`
/// is the slot + 1 of its cgroup, 0 when it is not recorded.
#[inline(always)]
fn cache_for(regs: u64) -> Option<&'static mut RecorderCpuCache> {
    let generation = *REC_GEN.get(0)?;
    let cache = REC_CPU.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, only this CPU's program runs on it (migration is disabled).
    let cache = unsafe { &mut *cache };
    if cache.regs == regs && cache.generation == generation {
        return Some(cache);
    }
    // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    let slot = match unsafe { REC_CACHE.get(&cg) } {
        Some(v) => *v,
        None => {
            // The deepest recorded cgroup at or above this one; walked once per cgroup.
            let v = cgroup::cgroup_lookup(&REC_TARGETS, cg).unwrap_or(0);
            let _ = REC_CACHE.insert(&cg, &v, 0);
            v
        }
    };
    cache.regs = regs;
    cache.slot = slot;
    cache.generation = generation;
    cache.last_call = u64::MAX;
    Some(cache)
}

/// True when the saved registers bear the marks of the x86-64 `syscall` instruction from
/// 64-bit code: the return address in rcx, the flags in r11, the 64-bit user code segment.
/// `int 0x80` leaves rcx and r11 as the program set them, and 32-bit code has another
/// segment, so those calls go on to TS_COMPAT. Only an `int 0x80` that first sets rcx and
/// r11 to exactly those values passes for native; such a call is recorded as the native call
/// of its number, which the same program could simply have made (recording trusts what runs;
/// the profile still refuses the 32-bit call).
#[inline(always)]
fn syscall_insn(regs: *const u8) -> bool {
    let ip = conf!(regs_ip);
    if ip == NO_OFFSET {
        return false;
    }
    let cs_at = conf!(regs_cs);
    // SAFETY: BTF-typed loads from `sys_enter`'s pt_regs, checked against its layout.
    let reg = |off: u32| unsafe { core::ptr::read_volatile(regs.wrapping_add(off as usize) as *const u64) };
    let cs = unsafe { core::ptr::read_volatile(regs.wrapping_add(cs_at as usize) as *const u16) };
    cs as u32 == conf!(user_cs) && reg(conf!(regs_cx)) == reg(ip) && reg(conf!(regs_r11)) == reg(conf!(regs_flags))
}

/// Which syscall table the current call uses.
#[inline(always)]
fn arch_of(nr: u64, regs: *const u8) -> usize {
    if nr & X32_SYSCALL_BIT != 0 {
        return ARCH_X32;
    }
    let off = conf!(thread_status);
    if off == NO_OFFSET || syscall_insn(regs) {
        return ARCH_NATIVE;
    }
    // A recorded task's `int 0x80`, sysenter or 32-bit code only: the one helper call on this
    // path. TS_COMPAT is per call (a 64-bit process may `int 0x80`), so it cannot be cached.
    // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    // SAFETY: a BTF-typed load the verifier checks against task_struct's layout.
    let status = unsafe { core::ptr::read_volatile(task.wrapping_add(off as usize) as *const u32) };
    if status & conf!(compat_mask) != 0 {
        ARCH_COMPAT
    } else {
        ARCH_NATIVE
    }
}

#[btf_tracepoint(function = "sys_enter")]
pub fn record_sys_enter(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let regs: *const u8 = ctx.arg(0);
    let Some(cache) = cache_for(regs as u64) else { return 0 };
    let slot = cache.slot;
    if slot == 0 {
        return 0;
    }
    let raw: u64 = ctx.arg(1);
    let arch = arch_of(raw, regs);
    let call = (raw & 0xffff_ffff) | ((arch as u64) << 32);
    if cache.last_call == call {
        return 0;
    }
    cache.last_call = call;
    let nr = (raw & !X32_SYSCALL_BIT) as usize;
    let Some(set) = REC_SETS.get_ptr_mut(slot - 1) else { return 0 };
    if nr >= SYSCALL_BITS {
        // Negative numbers (-1: a tracer skipped the call) and unknown tables.
        // SAFETY: this CPU's REC_SETS entry, valid and written by nothing else while the program
        // runs.
        unsafe { (*set).out_of_range += 1 };
        return 0;
    }
    let idx = arch * WORDS + nr / 64;
    if idx >= ARCHES * WORDS {
        return 0;
    }
    let bit = 1u64 << (nr % 64);
    // SAFETY: this CPU's REC_SETS entry, valid and written by nothing else while the program runs.
    let word = unsafe { &mut (*set).words[idx] };
    // Written only the first time: afterwards the line stays clean.
    if *word & bit == 0 {
        *word |= bit;
    }
    0
}

/// Retires every CPU's cached entry (see the top of this file).
#[inline(always)]
fn retire_cached_tasks() {
    if let Some(g) = REC_GEN.get_ptr_mut(0) {
        // Atomic: with plain stores, a bump delayed behind others could write an older value
        // back and revive an entry it should retire.
        // SAFETY: a map value, aligned; user space changes only the other half of it.
        #[cfg(target_arch = "bpf")]
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                g,
                TASKS_GENERATION_ONE,
            )
        };
        #[cfg(not(target_arch = "bpf"))]
        // SAFETY: a map value, aligned; user space changes only the other half of it.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(g) }
            .fetch_add(TASKS_GENERATION_ONE, core::sync::atomic::Ordering::Relaxed);
    }
}

/// A new task (a process or a thread), before it first runs: it may have a dead task's stack.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn rec_task_created(_ctx: BtfTracePointContext) -> i32 {
    retire_cached_tasks();
    0
}

/// A task moved to another cgroup.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn rec_task_moved(_ctx: BtfTracePointContext) -> i32 {
    retire_cached_tasks();
    0
}

/// The floor the benchmark compares against: an attached `sys_enter` program that does nothing.
#[btf_tracepoint(function = "sys_enter")]
pub fn empty_sys_enter(_ctx: BtfTracePointContext) -> i32 {
    0
}
