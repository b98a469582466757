//! notebook-guard seccomp recorder.
//!
//! A raw tracepoint on `sys_enter` that keeps, per recorded cgroup, one bit per syscall number
//! and architecture: no event per syscall, a bit is written only the first time. It is a
//! separate object so that the always-on sensor never carries a `sys_enter` program; the agent
//! attaches this one only while a recording or a drift watch runs.
//!
//! Per syscall the node pays one cgroup-id read and one hash lookup (`REC_CACHE`); the
//! ancestor walk that decides whether a cgroup is below a recorded one runs once per cgroup.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel},
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use guard_abi::{
    recorder::{
        ARCHES, ARCH_COMPAT, ARCH_NATIVE, ARCH_X32, CACHE_ENTRIES, MAX_TARGETS, NO_OFFSET, SYSCALL_BITS, WORDS,
        X32_SYSCALL_BIT,
    },
    RecorderConfig, SyscallSet, MAX_CGROUP_DEPTH,
};

#[no_mangle]
static REC_CONFIG: RecorderConfig = RecorderConfig { thread_status: NO_OFFSET, compat_mask: 0 };

/// Recorded cgroups (and everything below them): cgroup id → slot + 1.
#[map]
static REC_TARGETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Every cgroup seen so far → slot + 1, or 0 when it is not recorded. The agent clears it when
/// `REC_TARGETS` changes.
#[map]
static REC_CACHE: LruHashMap<u64, u32> = LruHashMap::with_max_entries(CACHE_ENTRIES, 0);

/// The syscall sets, by slot; per CPU, so setting a bit needs no atomic operation and no cache
/// line moves between CPUs. User space ORs the CPUs' copies.
#[map]
static REC_SETS: PerCpuArray<SyscallSet> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

macro_rules! conf {
    ($f:ident) => {{
        // Volatile: patched into .rodata at load time.
        let v = unsafe { core::ptr::read_volatile(&REC_CONFIG.$f) };
        v
    }};
}

/// The slot + 1 of the deepest recorded cgroup at or above the current one, 0 when none.
#[inline(always)]
fn resolve(own: u64) -> u32 {
    if let Some(v) = unsafe { REC_TARGETS.get(&own) } {
        return *v;
    }
    let mut found = 0;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == own {
            break;
        }
        if let Some(v) = unsafe { REC_TARGETS.get(&id) } {
            found = *v;
        }
        level += 1;
    }
    found
}

/// Which syscall table the current call uses.
#[inline(always)]
fn arch_of(nr: u64) -> usize {
    if nr & X32_SYSCALL_BIT != 0 {
        return ARCH_X32;
    }
    let off = conf!(thread_status);
    if off == NO_OFFSET {
        return ARCH_NATIVE;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut status: u32 = 0;
    unsafe { bpf_probe_read_kernel((&mut status as *mut u32).cast(), 4, task.wrapping_add(off as usize).cast()) };
    if status & conf!(compat_mask) != 0 {
        ARCH_COMPAT
    } else {
        ARCH_NATIVE
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn record_sys_enter(ctx: RawTracePointContext) -> i32 {
    let cg = unsafe { bpf_get_current_cgroup_id() };
    let slot = match unsafe { REC_CACHE.get(&cg) } {
        Some(v) => *v,
        None => {
            let v = resolve(cg);
            let _ = REC_CACHE.insert(&cg, &v, 0);
            v
        }
    };
    if slot == 0 {
        return 0;
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let raw: u64 = ctx.arg(1);
    let arch = arch_of(raw);
    let nr = (raw & !X32_SYSCALL_BIT) as usize;
    let Some(set) = REC_SETS.get_ptr_mut(slot - 1) else { return 0 };
    if nr >= SYSCALL_BITS {
        // Negative numbers (-1: a tracer skipped the call) and unknown tables.
        unsafe { (*set).out_of_range += 1 };
        return 0;
    }
    let idx = arch * WORDS + nr / 64;
    if idx >= ARCHES * WORDS {
        return 0;
    }
    let bit = 1u64 << (nr % 64);
    let word = unsafe { &mut (*set).words[idx] };
    // Written only the first time: afterwards the line stays clean.
    if *word & bit == 0 {
        *word |= bit;
    }
    0
}

/// The floor the benchmark compares against: an attached `sys_enter` program that does nothing.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn empty_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
