//! The ring buffer every probe reports into, its per-kind loss counters, and the wake-up
//! batching that decides when the agent is woken.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, generated::bpf_ktime_get_boot_ns},
    macros::map,
    maps::{ring_buf::RingBufEntry, Array, PerCpuArray, RingBuf},
};
use guard_abi::{EventHeader, EventKind, EVENT_KINDS, RECORD_FORMAT};

use crate::CONFIG;

/// The agent resizes this before load (`--ring-bytes`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records that did not fit in `EVENTS`, per event kind: loss is counted, never silent.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

/// Writes into the programs' own maps that failed, by `map_full` slot: a full map must not
/// go unnoticed (a full MARKS leaves a Python child unmarked under enforcement).
#[map]
static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(guard_abi::map_full::SLOTS, 0);

/// Counts a failed map write (the only failure an insert of a valid key has: a full map).
#[inline(always)]
pub(crate) fn count_full(slot: u32) {
    if let Some(n) = MAP_FULL.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, as in `count_lost`.
        unsafe { *n += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_lost(kind: EventKind) {
    if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: a per-CPU slot: only this CPU's program writes it, and it is not preempted
        // meanwhile.
        unsafe { *slot += 1 };
    }
}

/// Bytes waiting in `EVENTS` at the last submit (the agent's ring-fill gauge).
#[map]
static RING_FILL: Array<u64> = Array::with_max_entries(1, 0);

/// Non-zero while the agent drains on its own timer (set and cleared by its ring reader).
/// Not pinned: each load has its own, so a crashed agent's flag never silences the next one.
#[map]
static AGENT_POLLING: Array<u32> = Array::with_max_entries(1, 0);

/// A record of `kind` reserved in the ring, to be written in place (a record built on the
/// stack would count against the caller's call chain), with the flags to submit it with; or
/// none, the loss counted. The flags are read before the reservation: a reserved record
/// already counts as waiting data, and the wake-up decision must see the ring as it was (or an
/// idle agent would never be woken).
#[inline(always)]
pub(crate) fn reserve<T: 'static>(kind: EventKind) -> Option<(RingBufEntry<T>, u64)> {
    let flags = submit_flags();
    match EVENTS.reserve::<T>(0) {
        Some(entry) => Some((entry, flags)),
        None => {
            count_lost(kind);
            None
        }
    }
}

/// Submit flags implementing wake-up batching: the first record into an empty ring wakes an
/// idle agent (the first alert goes out at once, and an idle agent needs no timer). An agent
/// that is draining on its own timer is not woken (its reader would empty the ring and the
/// next record would wake it again: one needless wake-up per drain), except once
/// `wakeup_bytes` are waiting.
#[inline(always)]
pub(crate) fn submit_flags() -> u64 {
    let threshold = conf!(wakeup_bytes);
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(slot) = RING_FILL.get_ptr_mut(0) {
        // SAFETY: a valid map value; a racing store from another CPU only decides which recent fill
        // is kept.
        unsafe { *slot = avail };
    }
    if threshold == 0 {
        return 0;
    }
    if avail >= threshold {
        return BPF_RB_FORCE_WAKEUP as u64;
    }
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    let polling = AGENT_POLLING.get(0).is_some_and(|p| unsafe { core::ptr::read_volatile(p) } != 0);
    if avail == 0 && !polling {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub(crate) fn header(kind: EventKind, pid_tgid: u64, cgroup: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32 | RECORD_FORMAT << 16,
        // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
        cpu: unsafe { bpf_get_smp_processor_id() },
        // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        cgroup_id: cgroup,
    }
}
