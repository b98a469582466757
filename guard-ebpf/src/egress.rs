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
    stratum::{Flow, FLOW_PENDING},
    egress_verdict,
    kconst::{AF_INET, AF_INET6},
    EgressEvent, EgressKey, EgressRule, EventKind, EGRESS_ALLOW, EGRESS_DENY, EGRESS_DENY_SWITCH, EGRESS_ENFORCE,
    EGRESS_KEY_FIXED_BITS, MAX_EGRESS_RULES, MAX_WATCHED_CGROUPS,
};

use crate::{
    cgroup::cgroup_lookup_at,
    dns, fanout, stratum,
    read::current_cgroup,
    ring::{count_lost, header, submit_flags, EVENTS},
    scope,
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
/// `SUBJECT_SCOPE | scope`.
#[inline(always)]
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

/// An allowed TCP connect of a notebook: its first payload is read for a mining call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn watch_flow(
    ctx: &SockAddrContext,
    subject: u64,
    cgroup: u64,
    pid_tgid: u64,
    pol: u32,
    proto: u8,
    family: u8,
    port_be: u16,
    addr: [u8; 16],
    sendmsg: bool,
) {
    if proto != 6 || sendmsg {
        return;
    }
    let flow = Flow {
        subject,
        cgroup,
        pid_tgid,
        state: FLOW_PENDING,
        enforce: (pol & EGRESS_ENFORCE != 0) as u32,
        addr,
        port: u16::from_be(port_be),
        family,
        _pad: [0; 5],
    };
    // SAFETY: the hook's own context pointer.
    unsafe { stratum::watch(ctx.sock_addr.cast(), &flow) };
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
    if !loopback {
        fanout::count(subject, pid_tgid, cgroup, family, proto, port_be, addr);
    }
    let policy = pol & !EGRESS_ENFORCE;
    let rule = verdict(policy, proto, family, port_be, addr);
    if rule.action == EGRESS_ALLOW || loopback {
        // Answers are read from the servers the policy allows for DNS; on loopback only from
        // one it names (rank above any /0 switch): the notebook may run its own server there.
        if dns::is_dns_port(port_be) && rule.action == EGRESS_ALLOW && (!loopback || rule.rank >= 8 * 4) {
            let sock = DnsSocket { subject, cgroup, pid_tgid, policy, port: port_be, family, protocol: proto, server: addr };
            dns::track(ctx.sock_addr.cast(), &sock);
        }
        if !loopback {
            watch_flow(ctx, subject, cgroup, pid_tgid, pol, proto, family, port_be, addr, sendmsg);
        }
        return ALLOW;
    }
    if rule.action == EGRESS_DENY_SWITCH && dns::allows(subject, policy, proto, family, port_be, addr) {
        watch_flow(ctx, subject, cgroup, pid_tgid, pol, proto, family, port_be, addr, sendmsg);
        return ALLOW;
    }
    let enforce = pol & EGRESS_ENFORCE != 0;
    let ev = EgressEvent {
        hdr: header(EventKind::Egress, pid_tgid, cgroup),
        family: if family == 4 { AF_INET } else { AF_INET6 },
        protocol: proto as u32,
        verdict: if enforce { egress_verdict::DENIED } else { egress_verdict::WOULD_DENY },
        port: u16::from_be(port_be),
        sendmsg: sendmsg as u8,
        v4: (family == 4) as u8,
        addr,
        subject,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if EVENTS.output::<EgressEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Egress);
    }
    let _ = ctx.as_ptr();
    if enforce {
        REFUSE
    } else {
        ALLOW
    }
}
