//! Stratum on the wire: a notebook's allowed TCP connect marks its socket (`watch`, from the
//! connect hooks); `stratum_egress`, a cgroup skb egress program on the cgroup2 root, reads
//! that socket's first payload, whatever the port, and looks for a JSON-RPC `"method"` whose
//! name is a mining call. Only marked sockets pay more than a lookup, and only once. Under
//! enforcement the call is dropped before it leaves, and so is everything after it on that
//! flow; the agent then ends the process.

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, generated::bpf_get_socket_cookie, generated::bpf_loop},
    macros::{cgroup_skb, map},
    maps::{LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use guard_abi::{
    egress_verdict,
    stratum::{Flow, StratumEvent, FLOW_BLOCKED, MAX_STRATUM_FLOWS, METHOD_LEN, STRATUM_PEEK},
    EventKind,
};

use crate::{
    packet::Packet,
    ring::{header, reserve},
};

#[map]
static STRATUM_FLOWS: LruHashMap<u64, Flow> = LruHashMap::with_max_entries(MAX_STRATUM_FLOWS, 0);

/// This CPU's copy of a first payload, with room past its end for the word reads.
#[repr(C)]
struct Peek {
    bytes: [u8; STRATUM_PEEK + 64],
    len: u32,
    /// Offset just past `"method"`, or u32::MAX.
    found: u32,
}

#[map]
static STRATUM_PEEK_BUF: PerCpuArray<Peek> = PerCpuArray::with_max_entries(1, 0);

/// Marks socket `sock_addr` (a TCP connect the policy allowed) for its first payload.
/// # Safety
/// `sock_addr` is the context pointer the connect hook was called with.
#[inline(always)]
pub unsafe fn watch(sock_addr: *mut core::ffi::c_void, flow: &Flow) {
    let cookie = bpf_get_socket_cookie(sock_addr);
    let _ = STRATUM_FLOWS.insert(&cookie, flow, 0);
}

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(egress)]
pub fn stratum_egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: reads the packet through bpf_skb_load_bytes only; writes its per-CPU buffer and
    // the ring record it reserves.
    unsafe { on_egress(&ctx) }
}

/// # Safety
/// Called from `stratum_egress` with its context.
#[inline(always)]
unsafe fn on_egress(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let pkt = Packet::of(skb);
    // Every packet the node sends comes here: most leave at the protocol or the lookup.
    let Some(b0) = pkt.u8_at(0) else { return PASS };
    let (l4, total) = match b0 >> 4 {
        4 => {
            if pkt.u8_at(9) != Some(6) {
                return PASS;
            }
            let Some(total) = pkt.u16_at(2) else { return PASS };
            ((b0 & 0xf) * 4, total)
        }
        6 => {
            if pkt.u8_at(6) != Some(6) {
                return PASS;
            }
            let Some(plen) = pkt.u16_at(4) else { return PASS };
            (40, 40 + plen)
        }
        _ => return PASS,
    };
    let Some(doff) = pkt.u8_at(l4 + 12) else { return PASS };
    let payload = l4 + (doff >> 4) * 4;
    if total <= payload {
        return PASS;
    }
    let cookie = bpf_get_socket_cookie(skb.cast());
    // SAFETY: copied out at once.
    let Some(mut flow) = STRATUM_FLOWS.get(&cookie).copied() else { return PASS };
    if flow.state == FLOW_BLOCKED {
        return DROP;
    }
    let Some(peek) = STRATUM_PEEK_BUF.get_ptr_mut(0) else { return PASS };
    let want = total - payload;
    let len = if want > STRATUM_PEEK as u32 { STRATUM_PEEK as u32 } else { want };
    // 1..=256 as the verifier sees it.
    let size = (len.wrapping_sub(1) & (STRATUM_PEEK as u32 - 1)) + 1;
    // Zeroed word by word (an array literal would be built on the stack first).
    let words = (*peek).bytes.as_mut_ptr() as *mut u64;
    let mut k = 0;
    while k < (STRATUM_PEEK + 64) / 8 {
        words.add(k).write_unaligned(0);
        k += 1;
    }
    if bpf_skb_load_bytes(skb.cast(), payload, (*peek).bytes.as_mut_ptr().cast(), size) != 0 {
        return PASS;
    }
    (*peek).len = size;
    (*peek).found = u32::MAX;
    // bpf_loop's context must be on the stack: a pointer to the buffer, there.
    let mut at = PeekRef { peek };
    bpf_loop(size, find_method as *mut _, (&mut at as *mut PeekRef).cast(), 0);
    let method = match mining_method(&*peek) {
        Some(m) => m,
        None => {
            // Not a mining call: the flow is not looked at again.
            let _ = STRATUM_FLOWS.remove(&cookie);
            return PASS;
        }
    };
    let enforce = flow.enforce != 0;
    if enforce {
        flow.state = FLOW_BLOCKED;
        let _ = STRATUM_FLOWS.insert(&cookie, &flow, 0);
    } else {
        let _ = STRATUM_FLOWS.remove(&cookie);
    }
    report(&flow, method, enforce);
    if enforce {
        DROP
    } else {
        PASS
    }
}

#[repr(C)]
struct PeekRef {
    peek: *mut Peek,
}

/// Finds the first `"method"` (eight bytes, one word compare per offset).
unsafe extern "C" fn find_method(i: u64, at: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `PeekRef` on `on_egress`'s stack, which points at this
    // CPU's buffer.
    let p = unsafe { &mut *(*(at as *mut PeekRef)).peek };
    let i = (i as usize) & (STRATUM_PEEK - 1);
    if word(&p.bytes, i) == u64::from_le_bytes(*b"\"method\"") {
        p.found = i as u32 + 8;
        return 1;
    }
    0
}

#[inline(always)]
fn word(b: &[u8; STRATUM_PEEK + 64], i: usize) -> u64 {
    let i = i & (STRATUM_PEEK - 1);
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// The method's name when it is a mining call: after `"method"`, up to four `:` or spaces, a
/// quote, then a name starting as a miner's does.
#[inline(always)]
fn mining_method(p: &Peek) -> Option<[u8; METHOD_LEN]> {
    if p.found == u32::MAX {
        return None;
    }
    let mut at = p.found as usize & (STRATUM_PEEK - 1);
    let mut k = 0;
    while k < 4 && (p.bytes[at & (STRATUM_PEEK - 1)] == b':' || p.bytes[at & (STRATUM_PEEK - 1)] == b' ') {
        at += 1;
        k += 1;
    }
    if p.bytes[at & (STRATUM_PEEK - 1)] != b'"' {
        return None;
    }
    let start = (at + 1) & (STRATUM_PEEK - 1);
    let w = word(&p.bytes, start);
    let prefix = |s: &[u8]| {
        let mut m = [0u8; 8];
        m[..s.len()].copy_from_slice(s);
        let mask = if s.len() == 8 { u64::MAX } else { (1u64 << (s.len() * 8)) - 1 };
        w & mask == u64::from_le_bytes(m)
    };
    // Stratum v1 (`mining.*`), XMRig's and cpuminer's (`login`, `submit`, `getjob`), and
    // Ethereum stratum (`eth_submitLogin`, `eth_submitWork`, `eth_getWork`).
    let mining = prefix(b"mining.") || prefix(b"login\"") || prefix(b"submit\"") || prefix(b"getjob\"")
        || prefix(b"eth_subm") || prefix(b"eth_getW");
    if !mining {
        return None;
    }
    let mut name = [0u8; METHOD_LEN];
    let mut j = 0;
    while j < METHOD_LEN {
        let c = p.bytes[start + j];
        if c == b'"' {
            break;
        }
        name[j] = c;
        j += 1;
    }
    Some(name)
}

/// The mining call, to the agent: written straight into the ring (a record built on the
/// stack would count against the program's stack).
#[inline(always)]
fn report(flow: &Flow, method: [u8; METHOD_LEN], enforce: bool) {
    let Some((mut entry, flags)) = reserve::<StratumEvent>(EventKind::Stratum) else { return; };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every field is written before it is submitted.
    unsafe {
        (*ev).hdr = header(EventKind::Stratum, flow.pid_tgid, flow.cgroup);
        (*ev).subject = flow.subject;
        (*ev).verdict = if enforce { egress_verdict::DENIED } else { egress_verdict::WOULD_DENY };
        (*ev).port = flow.port;
        (*ev).v4 = (flow.family == 4) as u8;
        (*ev)._pad = 0;
        (*ev).addr = flow.addr;
        (*ev).method = method;
    }
    entry.submit(flags);
}
