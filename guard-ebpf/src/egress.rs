//! Egress: cgroup socket-address hooks (`connect4/6`, `sendmsg4/6`) judge each destination a
//! notebook's process connects or sends to against its egress policy, in LPM tries, with no
//! user-space round trip; what a switch refused, an allowed name's DNS answer may allow
//! (`dns.rs`). These hooks sit below io_uring: its connects pass through them too. Packet, raw
//! and ICMP sockets, which they do not see, are `sockets.rs`'.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_current_comm,
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, HashMap, LpmTrie},
    programs::SockAddrContext,
    EbpfContext,
};
use guard_abi::{
    dns::{DnsSocket, SUBJECT_SCOPE},
    egress_verdict,
    kconst::{AF_INET, AF_INET6},
    stratum::{Flow, FLOW_PENDING},
    EgressEvent, EgressKey, EgressRule, EventKind, EGRESS_ALLOW, EGRESS_DENY, EGRESS_DENY_SWITCH, EGRESS_ENFORCE,
    EGRESS_KEY_FIXED_BITS, MAX_EGRESS_RULES, MAX_WATCHED_CGROUPS,
};

use crate::{
    cgroup::cgroup_lookup_at,
    dns, fanout,
    read::current_cgroup,
    ring::{header, reserve},
    scope, stratum,
};

/// Notebook cgroups with an egress policy: policy id | `EGRESS_ENFORCE`.
#[map]
pub(crate) static EGRESS_CG: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCHED_CGROUPS, 0);

/// (policy, protocol, family, port, address prefix) → allow / deny.
#[map]
static EGRESS_RULES: LpmTrie<EgressKey, EgressRule> = LpmTrie::with_max_entries(MAX_EGRESS_RULES, BPF_F_NO_PREALLOC);

/// The egress policy of the current task: its cgroup's (or the nearest registered
/// ancestor's), else its process scope's (a LocalProcessSpawner notebook in the hub's cgroup).
#[inline(always)]
pub(crate) fn policy_of(cgroup: u64) -> Option<u32> {
    subject_of(cgroup).map(|(_, p)| p)
}

/// [`policy_of`], with the notebook it belongs to: the registered cgroup's id, or
/// `SUBJECT_SCOPE | scope`. Out of line: the ancestor walk's keys stay off the hook's frame.
#[inline(never)]
fn subject_of(cgroup: u64) -> Option<(u64, u32)> {
    if let Some(found) = cgroup_lookup_at(&EGRESS_CG, cgroup) {
        return Some(found);
    }
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    scope::of_task_at(tgid).filter(|(_, p)| p.egress != 0).map(|(s, p)| (SUBJECT_SCOPE | s as u64, p.egress))
}

pub(crate) const ALLOW: i32 = 1;
pub(crate) const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's own context; the callee reads kernel memory only through the probe-read
    // helpers (see its `# Safety`).
    unsafe { judge(&ctx, false, false) }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's own context; the callee reads kernel memory only through the probe-read
    // helpers (see its `# Safety`).
    unsafe { judge(&ctx, true, false) }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's own context; the callee reads kernel memory only through the probe-read
    // helpers (see its `# Safety`).
    unsafe { judge(&ctx, false, true) }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's own context; the callee reads kernel memory only through the probe-read
    // helpers (see its `# Safety`).
    unsafe { judge(&ctx, true, true) }
}

#[inline(always)]
fn lookup(key: &EgressKey, addr_bits: u32) -> Option<EgressRule> {
    let k = Key::new(EGRESS_KEY_FIXED_BITS + addr_bits, *key);
    EGRESS_RULES.get(&k).copied()
}

/// How strongly an action holds on a tie: an explicit deny, then a switch's, then allow.
#[inline(always)]
fn weight(action: u32) -> u32 {
    match action {
        EGRESS_DENY => 2,
        EGRESS_DENY_SWITCH => 1,
        _ => 0,
    }
}

/// The most specific rule for `d` (packed: action in the high half, rank in the low). Out of
/// line: its keys stay off the hook's own frame.
#[inline(never)]
fn verdict_of(d: &Dest) -> u64 {
    let r = verdict(d.pol & !EGRESS_ENFORCE, d.proto, d.family, d.port_be, d.addr);
    (r.action as u64) << 32 | r.rank as u64
}

/// The most specific rule among exact/any protocol and exact/any port; deny wins a tie.
#[inline(always)]
fn verdict(policy: u32, proto: u8, family: u8, port_be: u16, addr: [u8; 16]) -> EgressRule {
    let bits = if family == 4 { 32 } else { 128 };
    // Nothing matched: the policy's switches did not allow it. A flag and a value rather than
    // an Option: the compiler may read a None's payload it never set (in a select), and the
    // verifier refuses that as an uninitialised register.
    let mut best = EgressRule { action: EGRESS_DENY, rank: 0 };
    let mut found = false;
    let combos = [(proto, port_be), (proto, 0), (0, port_be), (0, 0)];
    let mut i = 0;
    while i < 4 {
        let (p, port) = combos[i];
        let key = EgressKey { policy, protocol: p, family, port, addr };
        if let Some(r) = lookup(&key, bits) {
            if !found || r.rank > best.rank || (r.rank == best.rank && weight(r.action) > weight(best.action)) {
                best = r;
            }
            found = true;
        }
        i += 1;
    }
    best
}

/// One connect or send of a notebook, as the out-of-line steps below take it: each builds its
/// own records in its own frame, so the hook's stack stays within what 6.1's verifier allows
/// for the whole call chain (512 bytes).
#[repr(C)]
pub(crate) struct Dest {
    pub subject: u64,
    pub cgroup: u64,
    pub pid_tgid: u64,
    pub addr: [u8; 16],
    /// `EGRESS_CG` value: policy id | `EGRESS_ENFORCE`.
    pub pol: u32,
    /// Network byte order.
    pub port_be: u16,
    pub family: u8,
    pub proto: u8,
}

/// An allowed TCP connect of a notebook: its first payload is read for a mining call.
#[inline(never)]
fn watch_flow(sock_addr: *mut core::ffi::c_void, d: &Dest) {
    let flow = Flow {
        subject: d.subject,
        cgroup: d.cgroup,
        pid_tgid: d.pid_tgid,
        state: FLOW_PENDING,
        enforce: (d.pol & EGRESS_ENFORCE != 0) as u32,
        addr: d.addr,
        port: u16::from_be(d.port_be),
        family: d.family,
        _pad: [0; 5],
    };
    // SAFETY: the hook's own context pointer.
    unsafe { stratum::watch(sock_addr, &flow) };
}

/// A query to an allowed DNS server: its answers are read.
#[inline(never)]
fn track_dns(sock_addr: *mut core::ffi::c_void, d: &Dest) {
    let sock = DnsSocket {
        subject: d.subject,
        cgroup: d.cgroup,
        pid_tgid: d.pid_tgid,
        policy: d.pol & !EGRESS_ENFORCE,
        port: d.port_be,
        family: d.family,
        protocol: d.proto,
        server: d.addr,
    };
    // SAFETY: the hook's own context pointer.
    unsafe { dns::track(sock_addr, &sock) };
}

/// A refused (or, monitored, would-be refused) destination, to the agent: written straight
/// into the ring (a record built on the stack would count against the hook's call chain).
#[inline(never)]
fn report(d: &Dest, sendmsg: bool) {
    let enforce = d.pol & EGRESS_ENFORCE != 0;
    let Some((mut entry, flags)) = reserve::<EgressEvent>(EventKind::Egress) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every field is written before it is submitted.
    unsafe {
        (*ev).hdr = header(EventKind::Egress, d.pid_tgid, d.cgroup);
        (*ev).family = if d.family == 4 { AF_INET } else { AF_INET6 };
        (*ev).protocol = d.proto as u32;
        (*ev).verdict = if enforce { egress_verdict::DENIED } else { egress_verdict::WOULD_DENY };
        (*ev).port = u16::from_be(d.port_be);
        (*ev).sendmsg = sendmsg as u8;
        (*ev).v4 = (d.family == 4) as u8;
        (*ev).addr = d.addr;
        (*ev).subject = d.subject;
        (*ev).comm = bpf_get_current_comm().unwrap_or_default();
    }
    entry.submit(flags);
}

/// # Safety
/// The socket-address context the cgroup hook was called with; it reads that context and the current task only.
unsafe fn judge(ctx: &SockAddrContext, v6: bool, sendmsg: bool) -> i32 {
    let sa = ctx.sock_addr;
    let proto = (*sa).protocol as u8;
    // user_port holds the port in network byte order in its low 16 bits.
    let port_be = (*sa).user_port as u16;
    let mut addr = [0u8; 16];
    let mut family = 4u8;
    if v6 {
        let w = [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            addr[i * 4] = b[0];
            addr[i * 4 + 1] = b[1];
            addr[i * 4 + 2] = b[2];
            addr[i * 4 + 3] = b[3];
            i += 1;
        }
        let mapped = w[0] == 0 && w[1] == 0 && w[2].to_ne_bytes() == [0, 0, 0xff, 0xff];
        if mapped {
            // ::ffff:a.b.c.d is IPv4: judge it as such (no v4 policy bypass through v6).
            addr = [0; 16];
            let b = w[3].to_ne_bytes();
            addr[0] = b[0];
            addr[1] = b[1];
            addr[2] = b[2];
            addr[3] = b[3];
        } else {
            family = 6;
        }
    } else {
        let b = (*sa).user_ip4.to_ne_bytes();
        addr[0] = b[0];
        addr[1] = b[1];
        addr[2] = b[2];
        addr[3] = b[3];
    }
    // Loopback is always allowed: kernels talk to their server over ZeroMQ on it. Decided
    // before any map lookup, since it is most of a notebook's connects; but for DNS.
    let loopback =
        (family == 4 && addr[0] == 127) || (family == 6 && addr[..15].iter().all(|b| *b == 0) && addr[15] == 1);
    if loopback && !dns::is_dns_port(port_be) {
        return ALLOW;
    }
    let cgroup = current_cgroup();
    let Some((subject, pol)) = subject_of(cgroup) else { return ALLOW };
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let d = Dest { subject, cgroup, pid_tgid, addr, pol, port_be, family, proto };
    if !loopback {
        let reached = fanout::count(&d);
        if reached != 0 {
            fanout::emit(&d, reached);
        }
    }
    let packed = verdict_of(&d);
    let rule = EgressRule { action: (packed >> 32) as u32, rank: packed as u32 };
    let sock_addr = ctx.sock_addr.cast();
    let by_name = rule.action == EGRESS_DENY_SWITCH && dns::allows(&d);
    if rule.action == EGRESS_ALLOW || loopback || by_name {
        // Answers are read from the servers the policy allows for DNS; on loopback only from
        // one it names (rank above any /0 switch): the notebook may run its own server there.
        if dns::is_dns_port(port_be) && rule.action == EGRESS_ALLOW && (!loopback || rule.rank >= 8 * 4) {
            track_dns(sock_addr, &d);
        }
        if !loopback && proto == 6 && !sendmsg {
            watch_flow(sock_addr, &d);
        }
        return ALLOW;
    }
    report(&d, sendmsg);
    let enforce = pol & EGRESS_ENFORCE != 0;
    let _ = ctx.as_ptr();
    if enforce {
        REFUSE
    } else {
        ALLOW
    }
}
