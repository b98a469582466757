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
    helpers::{
        bpf_skb_load_bytes,
        generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_skb, map},
    maps::{HashMap, LruHashMap},
    programs::SkBuffContext,
};
use guard_abi::{
    dns::{
        DnsEvent, DnsSocket, DnsTtl, DomainPortKey, NameKey, Resolved, ResolvedKey, DNS_EVENT_ADDRS, DNS_NAME_WIRE,
        LABEL_MAX, MAX_ANSWERS, MAX_DNS_ALLOWED, MAX_DNS_NAMES, MAX_DNS_SOCKETS, MAX_DOMAIN_PORTS, MAX_NAME_LABELS,
    },
    EventKind,
};

use crate::ring::{count_lost, header, submit_flags, EVENTS};

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

/// Does an answer this notebook received allow `addr` on this protocol and port?
#[inline(always)]
pub fn allows(subject: u64, policy: u32, proto: u8, family: u8, port_be: u16, addr: [u8; 16]) -> bool {
    let key = ResolvedKey { subject, family, _pad: [0; 7], addr };
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
    // SAFETY: reads the packet through bpf_skb_load_bytes only; writes its own stack and the
    // ring record it reserved.
    unsafe { on_ingress(&ctx) };
    // Never drops: this program only reads.
    1
}

#[inline(always)]
fn u8_at(ctx: &SkBuffContext, off: u32) -> Option<u32> {
    ctx.load::<u8>(off as usize).ok().map(u32::from)
}

#[inline(always)]
fn u16_at(ctx: &SkBuffContext, off: u32) -> Option<u32> {
    ctx.load::<u16>(off as usize).ok().map(|v| u32::from(u16::from_be(v)))
}

#[inline(always)]
fn u32_at(ctx: &SkBuffContext, off: u32) -> Option<u32> {
    ctx.load::<u32>(off as usize).ok().map(u32::from_be)
}

/// # Safety
/// Called from `dns_ingress` with its context.
#[inline(always)]
unsafe fn on_ingress(ctx: &SkBuffContext) -> Option<()> {
    // cgroup skb programs see the packet from its network header.
    let b0 = u8_at(ctx, 0)?;
    let mut src = [0u8; 16];
    let (family, proto, l4) = match b0 >> 4 {
        4 => {
            // Fragments: the DNS header is in the first one only; not followed.
            if u16_at(ctx, 6)? & 0x3fff != 0 {
                return None;
            }
            let a: [u8; 4] = ctx.load(12).ok()?;
            src[..4].copy_from_slice(&a);
            (4u8, u8_at(ctx, 9)?, (b0 & 0xf) * 4)
        }
        6 => {
            src = ctx.load(8).ok()?;
            (6u8, u8_at(ctx, 6)?, 40)
        }
        _ => return None,
    };
    // Every packet a socket on the node receives comes here: most leave on the source port.
    if (proto != 17 && proto != 6) || u16_at(ctx, l4)? != 53 {
        return None;
    }
    let dns = if proto == 17 {
        l4 + 8
    } else {
        // TCP: the message follows a 2-byte length in the first data segment; later segments
        // of a long answer are not read (their addresses stay refused).
        let payload = l4 + (u8_at(ctx, l4 + 12)? >> 4) * 4;
        if ctx.len() <= payload + 2 + 12 {
            return None;
        }
        payload + 2
    };
    let cookie = bpf_get_socket_cookie(ctx.skb.skb.cast());
    // SAFETY: copied out at once.
    let sock = (*DNS_SOCKS.get(&cookie)?).clone();
    // From the server the query went to, on the protocol it went by.
    if sock.protocol != proto as u8 || sock.family != family || sock.server != src {
        return None;
    }
    let flags = u16_at(ctx, dns + 2)?;
    // A response (QR), a standard query (opcode 0), no error, one question.
    if flags & 0x8000 == 0 || flags & 0x7800 != 0 || flags & 0xf != 0 || u16_at(ctx, dns + 4)? != 1 {
        return None;
    }
    let answers = u16_at(ctx, dns + 6)?;
    let mut starts = [0u32; MAX_NAME_LABELS];
    let (n, qend) = labels(ctx, dns + 12, &mut starts)?;
    let domains = match_name(ctx, sock.policy, &starts, n);
    // SAFETY: copied out at once.
    let ttl = DNS_TTL.get(&sock.policy).copied().unwrap_or(DEFAULT_TTL);
    let qlen = qend - (dns + 12);
    let flags = submit_flags();
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        count_lost(EventKind::Dns);
        return None;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every field is written before it is submitted.
    (*ev).hdr = header(EventKind::Dns, sock.pid_tgid, sock.cgroup);
    (*ev).subject = sock.subject;
    (*ev).domains = domains;
    (*ev).protocol = proto;
    (*ev).qname_len = qlen as u16;
    (*ev).qname = [0; DNS_NAME_WIRE];
    (*ev).addrs = [[0; 16]; DNS_EVENT_ADDRS];
    (*ev).n_addrs = 0;
    (*ev).v4 = 0;
    (*ev).more = 0;
    (*ev).ttl = 0;
    // 1..=256 as the verifier sees it: the name has a label, so `qlen` is at least 2.
    let len = (qlen.wrapping_sub(1) & (DNS_NAME_WIRE as u32 - 1)) + 1;
    bpf_skb_load_bytes(ctx.skb.skb.cast(), dns + 12, (*ev).qname.as_mut_ptr().cast(), len);
    read_answers(ctx, qend + 5, answers, &sock, domains, ttl, ev);
    entry.submit(flags);
    Some(())
}

/// The question's labels from `off`: their offsets into `starts`, their count, and the offset
/// of the name's final zero byte. None when compressed, too deep or malformed.
#[inline(always)]
fn labels(ctx: &SkBuffContext, mut off: u32, starts: &mut [u32; MAX_NAME_LABELS]) -> Option<(usize, u32)> {
    let mut n = 0usize;
    while n <= MAX_NAME_LABELS {
        let len = u8_at(ctx, off)?;
        if len == 0 {
            return if n > 0 { Some((n, off)) } else { None };
        }
        if len as usize > LABEL_MAX || n == MAX_NAME_LABELS {
            return None;
        }
        starts[n & (MAX_NAME_LABELS - 1)] = off;
        n += 1;
        off += 1 + len;
    }
    None
}

/// Domain entries of `policy` that the name with these labels matches.
#[inline(always)]
fn match_name(ctx: &SkBuffContext, policy: u32, starts: &[u32; MAX_NAME_LABELS], n: usize) -> u64 {
    let mut key = NameKey { policy, ..NameKey::default() };
    let mut mask = 0u64;
    let mut k = 0usize;
    while k < MAX_NAME_LABELS && k < n {
        let off = starts[(n - 1 - k) & (MAX_NAME_LABELS - 1)];
        let Some(len) = u8_at(ctx, off) else { break };
        if len == 0 || len as usize > LABEL_MAX {
            break;
        }
        key.label = [0; 64];
        // 1..=64 as the verifier sees it (a plain check on `len` may be made on another copy).
        let size = (len.wrapping_sub(1) & 63) + 1;
        // SAFETY: `size` is within the 64-byte label; the helper reads the packet.
        if unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), off + 1, key.label.as_mut_ptr().cast(), size) } != 0 {
            break;
        }
        lower(&mut key.label);
        key.len = len;
        // SAFETY: copied out at once.
        let Some(node) = (unsafe { DNS_NAMES.get(&key) }).copied() else { break };
        mask |= if k + 1 < n { node.wild } else { node.exact };
        key.parent = node.id;
        k += 1;
    }
    mask
}

/// ASCII upper to lower case, eight bytes at a time (labels are compared as bytes).
#[inline(always)]
fn lower(label: &mut [u8; 64]) {
    let mut i = 0;
    while i < 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&label[i * 8..i * 8 + 8]);
        let x = u64::from_ne_bytes(w);
        let low7 = x & 0x7f7f_7f7f_7f7f_7f7f;
        // Bit 7 of each byte: above 'Z', at least 'A', ASCII.
        let above_z = low7 + 0x2525_2525_2525_2525;
        let from_a = low7 + 0x3f3f_3f3f_3f3f_3f3f;
        let upper = !x & (from_a ^ above_z) & 0x8080_8080_8080_8080;
        label[i * 8..i * 8 + 8].copy_from_slice(&(x | (upper >> 2)).to_ne_bytes());
        i += 1;
    }
}

/// Reads up to `MAX_ANSWERS` records from `off`: each A/AAAA is allowed for the notebook when
/// the name matched (`domains`), and reported in `ev`. Stops at the first malformed record.
/// # Safety
/// `ev` is a reserved ring record.
#[inline(always)]
unsafe fn read_answers(
    ctx: &SkBuffContext,
    mut off: u32,
    count: u32,
    sock: &DnsSocket,
    domains: u64,
    ttl: DnsTtl,
    ev: *mut DnsEvent,
) {
    let now = bpf_ktime_get_boot_ns();
    let mut a = 0;
    while a < MAX_ANSWERS && a < count {
        let Some(owner) = u8_at(ctx, off) else { return };
        if owner & 0xc0 == 0xc0 {
            off += 2;
        } else {
            // An uncompressed owner name: skipped label by label.
            let mut s = 0;
            while s <= MAX_NAME_LABELS {
                let Some(l) = u8_at(ctx, off) else { return };
                off += 1;
                if l == 0 {
                    break;
                }
                if l & 0xc0 == 0xc0 {
                    off += 1;
                    break;
                }
                off += l;
                s += 1;
            }
        }
        let (Some(rtype), Some(rr_ttl), Some(rdlen)) = (u16_at(ctx, off), u32_at(ctx, off + 4), u16_at(ctx, off + 8))
        else {
            return;
        };
        let rdata = off + 10;
        let fam = match (rtype, rdlen) {
            (1, 4) => 4u8,
            (28, 16) => 6u8,
            _ => 0,
        };
        if fam != 0 {
            let mut addr = [0u8; 16];
            let ok = if fam == 4 {
                ctx.load::<[u8; 4]>(rdata as usize).map(|b| addr[..4].copy_from_slice(&b)).is_ok()
            } else {
                ctx.load::<[u8; 16]>(rdata as usize).map(|b| addr = b).is_ok()
            };
            if !ok {
                return;
            }
            let secs = if rr_ttl < ttl.min {
                ttl.min
            } else if rr_ttl > ttl.max {
                ttl.max
            } else {
                rr_ttl
            };
            if domains != 0 {
                allow(sock, fam, addr, domains, now + secs as u64 * NS);
            }
            let n = (*ev).n_addrs as usize;
            if n < DNS_EVENT_ADDRS {
                (*ev).addrs[n & (DNS_EVENT_ADDRS - 1)] = addr;
                if fam == 4 {
                    (*ev).v4 |= 1 << n;
                }
                (*ev).n_addrs = n as u8 + 1;
                if n == 0 {
                    (*ev).ttl = secs;
                }
            } else {
                (*ev).more += 1;
            }
        }
        off = rdata + rdlen;
        a += 1;
    }
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
