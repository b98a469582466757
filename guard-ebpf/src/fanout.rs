//! Fan-out: each notebook connect and UDP send counts its destination (address, port,
//! protocol) once per process and window; the send that reaches the policy's threshold is
//! reported, once per window. Called from the egress hooks, allowed and refused traffic alike.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, generated::bpf_ktime_get_boot_ns},
    macros::map,
    maps::{Array, LruHashMap},
};
use guard_abi::{
    fanout::{FanCount, FanoutConf, FanoutEvent, SeenKey, MAX_FANOUT_PROCS, MAX_FANOUT_SEEN},
    EventKind,
};

use crate::{
    egress::Dest,
    ring::{header, reserve},
};

/// (process, destination) → when it was first seen in the process's window.
#[map]
static FANOUT_SEEN: LruHashMap<SeenKey, u64> = LruHashMap::with_max_entries(MAX_FANOUT_SEEN, 0);

/// Process → its window and count.
#[map]
static FANOUT_COUNT: LruHashMap<u32, FanCount> = LruHashMap::with_max_entries(MAX_FANOUT_PROCS, 0);

/// Written by the agent from the policy (`fan_out`); zero: off.
#[map]
static FANOUT_CONF: Array<FanoutConf> = Array::with_max_entries(1, 0);

/// Counts `d`'s destination for its process; when that reaches the threshold, the count and
/// the window's age in ms, packed (`destinations | ms << 32`), else 0. Out of line: its
/// records stay off the hook's own frame.
#[inline(never)]
pub fn count(d: &Dest) -> u64 {
    let tgid = (d.pid_tgid >> 32) as u32;
    let (family, proto, port_be, addr) = (d.family, d.proto, d.port_be, d.addr);
    // SAFETY: copied out at once.
    let Some(conf) = FANOUT_CONF.get(0).copied() else { return 0 };
    if conf.destinations == 0 {
        return 0;
    }
    // SAFETY: a BPF helper that takes no pointer.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: copied out at once.
    let mut c = unsafe { FANOUT_COUNT.get(&tgid) }.copied().unwrap_or_default();
    if now.wrapping_sub(c.window_start) > conf.window_ns {
        c = FanCount { window_start: now, count: 0, reported: 0 };
    }
    let key = SeenKey { tgid, port: port_be, family, protocol: proto, addr };
    // SAFETY: copied out at once.
    if let Some(seen) = unsafe { FANOUT_SEEN.get(&key) }.copied() {
        if seen >= c.window_start {
            return 0;
        }
    }
    let _ = FANOUT_SEEN.insert(&key, &now, 0);
    c.count += 1;
    let reached = c.count >= conf.destinations && c.reported == 0;
    if reached {
        c.reported = 1;
    }
    let _ = FANOUT_COUNT.insert(&tgid, &c, 0);
    if !reached {
        return 0;
    }
    let elapsed_ms = now.wrapping_sub(c.window_start) / 1_000_000;
    (c.count as u64) | (elapsed_ms & 0xffff_ffff) << 32
}

/// The threshold reached (`count`'s packed result): to the agent. Out of line, like `count`,
/// and called by the hook itself, so the two frames are never stacked.
#[inline(never)]
pub fn emit(d: &Dest, reached: u64) {
    let (destinations, elapsed_ms) = (reached as u32, (reached >> 32) as u32);
    // Straight into the ring: a record built on the stack would count against the hook's
    // call chain.
    let Some((mut entry, flags)) = reserve::<FanoutEvent>(EventKind::Fanout) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every field is written before it is submitted.
    unsafe {
        (*ev).hdr = header(EventKind::Fanout, d.pid_tgid, d.cgroup);
        (*ev).subject = d.subject;
        (*ev).destinations = destinations;
        (*ev).elapsed_ms = elapsed_ms;
        (*ev).port = u16::from_be(d.port_be);
        (*ev).v4 = (d.family == 4) as u8;
        (*ev).protocol = d.proto;
        (*ev)._pad = 0;
        (*ev).addr = d.addr;
        (*ev).comm = bpf_get_current_comm().unwrap_or_default();
    }
    entry.submit(flags);
}
