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

use crate::ring::{count_lost, header, submit_flags, EVENTS};

/// (process, destination) → when it was first seen in the process's window.
#[map]
static FANOUT_SEEN: LruHashMap<SeenKey, u64> = LruHashMap::with_max_entries(MAX_FANOUT_SEEN, 0);

/// Process → its window and count.
#[map]
static FANOUT_COUNT: LruHashMap<u32, FanCount> = LruHashMap::with_max_entries(MAX_FANOUT_PROCS, 0);

/// Written by the agent from the policy (`fan_out`); zero: off.
#[map]
static FANOUT_CONF: Array<FanoutConf> = Array::with_max_entries(1, 0);

/// Counts `dest` for the current process of notebook `subject`.
#[inline(always)]
pub fn count(subject: u64, pid_tgid: u64, cgroup: u64, family: u8, proto: u8, port_be: u16, addr: [u8; 16]) {
    // SAFETY: copied out at once.
    let Some(conf) = FANOUT_CONF.get(0).copied() else { return };
    if conf.destinations == 0 {
        return;
    }
    // SAFETY: a BPF helper that takes no pointer.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once.
    let mut c = unsafe { FANOUT_COUNT.get(&tgid) }.copied().unwrap_or_default();
    if now.wrapping_sub(c.window_start) > conf.window_ns {
        c = FanCount { window_start: now, count: 0, reported: 0 };
    }
    let key = SeenKey { tgid, port: port_be, family, protocol: proto, addr };
    // SAFETY: copied out at once.
    if let Some(seen) = unsafe { FANOUT_SEEN.get(&key) }.copied() {
        if seen >= c.window_start {
            return;
        }
    }
    let _ = FANOUT_SEEN.insert(&key, &now, 0);
    c.count += 1;
    let reached = c.count >= conf.destinations && c.reported == 0;
    if reached {
        c.reported = 1;
    }
    let _ = FANOUT_COUNT.insert(&tgid, &c, 0);
    if reached {
        let ev = FanoutEvent {
            hdr: header(EventKind::Fanout, pid_tgid, cgroup),
            subject,
            destinations: c.count,
            elapsed_ms: (now.wrapping_sub(c.window_start) / 1_000_000) as u32,
            port: u16::from_be(port_be),
            v4: (family == 4) as u8,
            protocol: proto,
            _pad: 0,
            addr,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        if EVENTS.output::<FanoutEvent>(&ev, submit_flags()).is_err() {
            count_lost(EventKind::Fanout);
        }
    }
}
