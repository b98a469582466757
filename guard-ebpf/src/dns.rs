//! Egress by name. A notebook's query to an allowed DNS server marks its socket (`track`, from
//! the connect/sendmsg hooks); the answer is read on the socket's ingress path (`dns_ingress`,
//! a cgroup skb program on the cgroup2 root), before the application can read it, so an
//! address an allowed name resolved to is in `DNS_ALLOWED` before the first connect to it.
//! The connect hooks then ask `allows` for what a policy switch refused.
//!
//! The question name is matched against the policy's names label by label, last label first,
//! on exact bytes (a trie in a hash map: no hash of a name to collide with). Every A and AAAA
//! record of the answer is credited to the question's name: CNAME chains end there, and the
//! server is one the policy allows for DNS. Each answer is also reported to the agent, so
//! egress alerts name the destination.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    bindings::__sk_buff,
    helpers::{
        bpf_skb_load_bytes,
        generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_loop},
    },
    macros::{cgroup_skb, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use guard_abi::{
    dns::{
        DnsEvent, DnsSocket, DnsTtl, DomainPortKey, NameKey, Resolved, ResolvedKey, DNS_EVENT_ADDRS, DNS_NAME_WIRE,
        LABEL_MAX, MAX_ANSWERS, MAX_DNS_ALLOWED, MAX_DNS_NAMES, MAX_DNS_SOCKETS, MAX_DOMAIN_PORTS, MAX_NAME_LABELS,
    },
    EventKind,
};

use crate::{
    packet::{lower, u16_at, u32_at, u8_at, Packet},
    ring::{header, reserve},
};

#[map]
static DNS_SOCKS: LruHashMap<u64, DnsSocket> = LruHashMap::with_max_entries(MAX_DNS_SOCKETS, 0);

#[map]
static DNS_NAMES: HashMap<NameKey, guard_abi::dns::NameNode> =
    HashMap::with_max_entries(MAX_DNS_NAMES, BPF_F_NO_PREALLOC);

#[map]
static DNS_ALLOWED: LruHashMap<ResolvedKey, Resolved> = LruHashMap::with_max_entries(MAX_DNS_ALLOWED, 0);

#[map]
static DOMAIN_PORTS: HashMap<DomainPortKey, u64> = HashMap::with_max_entries(MAX_DOMAIN_PORTS, BPF_F_NO_PREALLOC);

#[map]
static DNS_TTL: HashMap<u32, DnsTtl> = HashMap::with_max_entries(MAX_DOMAIN_PORTS, BPF_F_NO_PREALLOC);

/// Without a `DNS_TTL` entry (a policy with no names): only reported, never allowed.
const DEFAULT_TTL: DnsTtl = DnsTtl { min: 60, max: 3600 };
const DNS_PORT_BE: u16 = 53u16.to_be();
const NS: u64 = 1_000_000_000;

/// Remembers socket `ctx` (a sock_addr hook's `bpf_sock_addr`) as one that queried `server`.
/// # Safety
/// `sock_addr` is the context pointer the hook was called with.
#[inline(always)]
pub unsafe fn track(sock_addr: *mut core::ffi::c_void, sock: &DnsSocket) {
    let cookie = bpf_get_socket_cookie(sock_addr);
    let _ = DNS_SOCKS.insert(&cookie, sock, 0);
}

/// Does an answer this notebook received allow `d`'s destination on its protocol and port?
/// Out of line: its keys stay off the hook's own frame.
#[inline(never)]
pub fn allows(d: &crate::egress::Dest) -> bool {
    let (subject, policy, proto, family, port_be) =
        (d.subject, d.pol & !guard_abi::EGRESS_ENFORCE, d.proto, d.family, d.port_be);
    let key = ResolvedKey { subject, family, _pad: [0; 7], addr: d.addr };
    // SAFETY: the value is copied out at once; an LRU eviction meanwhile only makes it stale.
    let Some(r) = (unsafe { DNS_ALLOWED.get(&key) }).copied() else { return false };
    // SAFETY: a BPF helper that takes no pointer.
    if r.policy != policy || r.expires_ns <= unsafe { bpf_ktime_get_boot_ns() } {
        return false;
    }
    let mut mask = 0u64;
    for (p, port) in [(proto, port_be), (proto, 0), (0, port_be), (0, 0)] {
        let k = DomainPortKey { policy, protocol: p, _pad: 0, port };
        // SAFETY: the value is copied out at once.
        if let Some(m) = unsafe { DOMAIN_PORTS.get(&k) } {
            mask |= *m;
        }
    }
    mask & r.domains != 0
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    // SAFETY: reads the packet through bpf_skb_load_bytes only; writes its own stack, its
    // per-CPU work area and the ring record it reserved.
    unsafe { on_ingress(&ctx) };
    // Never drops: this program only reads.
    1
}

/// This CPU's work area for one answer: filled and read by the loop callbacks.
#[repr(C)]
struct Work {
    key: NameKey,
    starts: [u32; MAX_NAME_LABELS],
    addrs: [[u8; 16]; DNS_EVENT_ADDRS],
    sock: DnsSocket,
    now: u64,
    mask: u64,
    ttl: DnsTtl,
    /// Offset of the next label, then of the next answer record.
    off: u32,
    /// Labels found; answer records in the message.
    labels: u32,
    answers: u32,
    parent: u32,
    n_addrs: u32,
    v4: u32,
    more: u32,
    first_ttl: u32,
    /// Set by a callback that found the message malformed.
    bad: u32,
}

/// One per CPU: the work area is larger than the stack allows beside the record.
#[map]
static DNS_WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// What the loop callbacks get: the packet and the work area. Loops run through `bpf_loop`,
/// whose callback is verified once, not once per iteration and path (bounded loops here cost
/// the verifier hundreds of thousands of instructions, minutes on an emulated CPU).
#[repr(C)]
struct Walk {
    skb: *mut __sk_buff,
    work: *mut Work,
}

/// # Safety
/// Called from `dns_ingress` with its context.
#[inline(always)]
unsafe fn on_ingress(ctx: &SkBuffContext) -> Option<()> {
    let skb = ctx.skb.skb;
    let pkt = Packet::of(skb);
    // cgroup skb programs see the packet from its network header.
    let b0 = pkt.u8_at(0)?;
    let (family, proto, l4) = match b0 >> 4 {
        4 => {
            // Fragments: the DNS header is in the first one only; not followed.
            if pkt.u16_at(6)? & 0x3fff != 0 {
                return None;
            }
            (4u8, pkt.u8_at(9)?, (b0 & 0xf) * 4)
        }
        6 => (6u8, pkt.u8_at(6)?, 40),
        _ => return None,
    };
    // Every packet a socket on the node receives comes here: most leave on the source port,
    // before anything else is read.
    if (proto != 17 && proto != 6) || pkt.u16_at(l4)? != 53 {
        return None;
    }
    let mut src = [0u8; 16];
    if family == 4 {
        let mut v4 = [0u8; 4];
        pkt.copy(12, &mut v4)?;
        src[..4].copy_from_slice(&v4);
    } else {
        pkt.copy(8, &mut src)?;
    }
    let dns = if proto == 17 {
        l4 + 8
    } else {
        // TCP: the message follows a 2-byte length in the first data segment; later segments
        // of a long answer are not read (their addresses stay refused).
        let payload = l4 + (u8_at(skb, l4 + 12)? >> 4) * 4;
        if ctx.len() <= payload + 2 + 12 {
            return None;
        }
        payload + 2
    };
    let cookie = bpf_get_socket_cookie(skb.cast());
    // SAFETY: copied out at once.
    let sock = *DNS_SOCKS.get(&cookie)?;
    // From the server the query went to, on the protocol it went by.
    if sock.protocol != proto as u8 || sock.family != family || sock.server != src {
        return None;
    }
    let flags = u16_at(skb, dns + 2)?;
    // A response (QR), a standard query (opcode 0), no error, one question.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || flags & 0xf != 0 || u16_at(skb, dns + 4)? != 1 {
        return None;
    }
    let w = DNS_WORK.get_ptr_mut(0)?;
    (*w).sock = sock;
    (*w).answers = u16_at(skb, dns + 6)?;
    (*w).off = dns + 12;
    (*w).labels = 0;
    (*w).bad = 0;
    let mut walk = Walk { skb, work: w };
    let walk_ptr = (&mut walk as *mut Walk).cast();
    bpf_loop(MAX_NAME_LABELS as u32 + 1, label_step as *mut _, walk_ptr, 0);
    let n = (*w).labels;
    if (*w).bad != 0 || n == 0 || n as usize > MAX_NAME_LABELS {
        return None;
    }
    let qend = (*w).off;
    (*w).key = NameKey { policy: sock.policy, ..NameKey::default() };
    (*w).parent = 0;
    (*w).mask = 0;
    bpf_loop(n, match_step as *mut _, walk_ptr, 0);
    let domains = (*w).mask;
    // SAFETY: copied out at once.
    (*w).ttl = DNS_TTL.get(&sock.policy).copied().unwrap_or(DEFAULT_TTL);
    (*w).now = bpf_ktime_get_boot_ns();
    (*w).off = qend + 5;
    (*w).n_addrs = 0;
    (*w).v4 = 0;
    (*w).more = 0;
    (*w).first_ttl = 0;
    let records = if (*w).answers < MAX_ANSWERS { (*w).answers } else { MAX_ANSWERS };
    bpf_loop(records, answer_step as *mut _, walk_ptr, 0);

    let qlen = qend - (dns + 12);
    let Some((mut entry, flags)) = reserve::<DnsEvent>(EventKind::Dns) else { return None; };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every field is written before it is submitted.
    (*ev).hdr = header(EventKind::Dns, sock.pid_tgid, sock.cgroup);
    (*ev).subject = sock.subject;
    (*ev).domains = domains;
    (*ev).protocol = proto;
    (*ev).qname_len = qlen as u16;
    (*ev).qname = [0; DNS_NAME_WIRE];
    (*ev).addrs = (*w).addrs;
    (*ev).n_addrs = (*w).n_addrs as u8;
    (*ev).v4 = (*w).v4 as u8;
    (*ev).more = (*w).more;
    (*ev).ttl = (*w).first_ttl;
    // 1..=256 as the verifier sees it: the name has a label, so `qlen` is at least 2.
    let len = (qlen.wrapping_sub(1) & (DNS_NAME_WIRE as u32 - 1)) + 1;
    bpf_skb_load_bytes(skb.cast(), dns + 12, (*ev).qname.as_mut_ptr().cast(), len);
    entry.submit(flags);
    Some(())
}

/// The walk's packet and work area.
/// # Safety
/// `walk` is the `Walk` on `on_ingress`'s stack, its `work` this CPU's work area.
#[inline(always)]
unsafe fn parts(walk: *mut core::ffi::c_void) -> (*mut __sk_buff, &'static mut Work) {
    let walk = walk as *mut Walk;
    ((*walk).skb, &mut *(*walk).work)
}

/// One label of the question: its offset into `starts`. Stops at the final zero byte (the
/// name's end, `off` left on it); a pointer, an oversized label or a name deeper than
/// `MAX_NAME_LABELS` marks the message bad.
unsafe extern "C" fn label_step(_i: u64, walk: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `on_ingress` gave it.
    let (skb, w) = unsafe { parts(walk) };
    let Some(len) = u8_at(skb, w.off) else {
        w.bad = 1;
        return 1;
    };
    if len == 0 {
        return 1;
    }
    if len as usize > LABEL_MAX || w.labels as usize >= MAX_NAME_LABELS {
        w.bad = 1;
        return 1;
    }
    w.starts[w.labels as usize & (MAX_NAME_LABELS - 1)] = w.off;
    w.labels += 1;
    w.off += 1 + len;
    0
}

/// Label `n - 1 - i` (the last first) looked up under the label before it; the entries a
/// node ends go into `mask` (`*.` ones only while labels remain below).
unsafe extern "C" fn match_step(i: u64, walk: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `on_ingress` gave it.
    let (skb, w) = unsafe { parts(walk) };
    let n = w.labels as u64;
    if i >= n {
        return 1;
    }
    let off = w.starts[(n - 1 - i) as usize & (MAX_NAME_LABELS - 1)];
    let Some(len) = u8_at(skb, off) else { return 1 };
    if len == 0 || len as usize > LABEL_MAX {
        return 1;
    }
    w.key.label = [0; 64];
    // 1..=64 as the verifier sees it (a plain check on `len` may be made on another copy).
    let size = (len.wrapping_sub(1) & 63) + 1;
    // SAFETY: `size` is within the 64-byte label; the helper reads the packet.
    if unsafe { bpf_skb_load_bytes(skb.cast(), off + 1, w.key.label.as_mut_ptr().cast(), size) } != 0 {
        return 1;
    }
    lower(&mut w.key.label);
    w.key.len = len;
    w.key.parent = w.parent;
    // SAFETY: copied out at once.
    let Some(node) = (unsafe { DNS_NAMES.get(&w.key) }).copied() else { return 1 };
    w.mask |= if i + 1 < n { node.wild } else { node.exact };
    w.parent = node.id;
    0
}

/// One answer record at `off`: an A or AAAA is allowed for the notebook when the question's
/// name matched (`mask`), and kept for the report. Owner names must be compressed (a pointer
/// to the question or to a CNAME's target), as every server writes them; an uncompressed
/// one ends the walk.
unsafe extern "C" fn answer_step(_i: u64, walk: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `on_ingress` gave it.
    let (skb, w) = unsafe { parts(walk) };
    let off = w.off;
    match u8_at(skb, off) {
        Some(owner) if owner & 0xc0 == 0xc0 => {}
        _ => return 1,
    }
    let (Some(rtype), Some(rr_ttl), Some(rdlen)) = (u16_at(skb, off + 2), u32_at(skb, off + 6), u16_at(skb, off + 10))
    else {
        return 1;
    };
    let rdata = off + 12;
    w.off = rdata + rdlen;
    let fam = match (rtype, rdlen) {
        (1, 4) => 4u8,
        (28, 16) => 6u8,
        _ => return 0,
    };
    let mut addr = [0u8; 16];
    // SAFETY: 4 or 16 bytes into a 16-byte stack array.
    if unsafe { bpf_skb_load_bytes(skb.cast(), rdata, addr.as_mut_ptr().cast(), if fam == 4 { 4 } else { 16 }) } != 0 {
        return 1;
    }
    let secs = if rr_ttl < w.ttl.min {
        w.ttl.min
    } else if rr_ttl > w.ttl.max {
        w.ttl.max
    } else {
        rr_ttl
    };
    if w.mask != 0 {
        allow(&w.sock, fam, addr, w.mask, w.now + secs as u64 * NS);
    }
    let n = w.n_addrs as usize;
    if n < DNS_EVENT_ADDRS {
        w.addrs[n & (DNS_EVENT_ADDRS - 1)] = addr;
        if fam == 4 {
            w.v4 |= 1 << n;
        }
        if n == 0 {
            w.first_ttl = secs;
        }
        w.n_addrs += 1;
    } else {
        w.more += 1;
    }
    0
}

/// `addr` allowed for the notebook until `expires`, for `domains` (added to what another
/// allowed name already gave it, while that lasts).
#[inline(always)]
fn allow(sock: &DnsSocket, family: u8, addr: [u8; 16], domains: u64, expires: u64) {
    let key = ResolvedKey { subject: sock.subject, family, _pad: [0; 7], addr };
    let mut v = Resolved { expires_ns: expires, domains, policy: sock.policy, _pad: 0 };
    // SAFETY: copied out at once.
    if let Some(old) = unsafe { DNS_ALLOWED.get(&key) } {
        // SAFETY: a BPF helper that takes no pointer.
        if old.policy == sock.policy && old.expires_ns > unsafe { bpf_ktime_get_boot_ns() } {
            v.domains |= old.domains;
            if old.expires_ns > v.expires_ns {
                v.expires_ns = old.expires_ns;
            }
        }
    }
    let _ = DNS_ALLOWED.insert(&key, &v, 0);
}

/// The server of a query, as the sock_addr hooks see it, if it is one answers are read from.
#[inline(always)]
pub fn is_dns_port(port_be: u16) -> bool {
    port_be == DNS_PORT_BE
}
