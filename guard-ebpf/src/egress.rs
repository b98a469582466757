//! Egress: cgroup socket-address hooks (`connect4/6`, `sendmsg4/6`) judge each destination a
//! notebook's process connects or sends to against its egress policy, in LPM tries, with no
//! user-space round trip. These hooks sit below io_uring: its connects pass through them too.
//! Plus `socket()` of packet and raw sockets (sniffing), and of ICMP datagram sockets, whose
//! sends no cgroup hook sees.

use core::mem::size_of;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_comm,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, kprobe, map, tracepoint},
    maps::{lpm_trie::Key, HashMap, LpmTrie},
    programs::{BtfTracePointContext, ProbeContext, SockAddrContext, SockContext, TracePointContext},
    EbpfContext,
};
use guard_abi::{
    egress_verdict,
    kconst::{
        AF_INET, AF_INET6, AF_PACKET, CAP_NET_RAW, IPPROTO_ICMP, IPPROTO_ICMPV6, NR_I386_SOCKET, NR_I386_SOCKETCALL,
        NR_IO_URING_ENTER, NR_SOCKET, PF_IO_WORKER, SOCK_DGRAM, SOCK_RAW, X32_SYSCALL_BIT,
    },
    recorder::NO_OFFSET,
    dns::{DnsSocket, SUBJECT_SCOPE},
    EgressEvent, EgressKey, EgressRule, EventKind, SocketEvent, EGRESS_ALLOW, EGRESS_DENY, EGRESS_DENY_SWITCH,
    EGRESS_ENFORCE, EGRESS_KEY_FIXED_BITS, MAX_EGRESS_RULES, MAX_WATCHED_CGROUPS, SYSCALL_UNKNOWN,
};

use crate::{
    cgroup::cgroup_lookup_at,
    dns,
    read::current_cgroup,
    ring::{count_lost, header, submit_flags, EVENTS},
    scope, CONFIG,
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
fn policy_of(cgroup: u64) -> Option<u32> {
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

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

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
    let policy = pol & !EGRESS_ENFORCE;
    let rule = verdict(policy, proto, family, port_be, addr);
    if rule.action == EGRESS_ALLOW || loopback {
        // Answers are read from the servers the policy allows for DNS; on loopback only from
        // one it names (rank above any /0 switch): the notebook may run its own server there.
        if dns::is_dns_port(port_be) && rule.action == EGRESS_ALLOW && (!loopback || rule.rank >= 8 * 4) {
            let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
            let sock = DnsSocket { subject, cgroup, pid_tgid, policy, port: port_be, family, protocol: proto, server: addr };
            dns::track(ctx.sock_addr.cast(), &sock);
        }
        return ALLOW;
    }
    if rule.action == EGRESS_DENY_SWITCH && dns::allows(subject, policy, proto, family, port_be, addr) {
        return ALLOW;
    }
    let enforce = pol & EGRESS_ENFORCE != 0;
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
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

// Packet and raw sockets (sniffing, crafted packets), three ways in to one check, the cheapest
// the kernel offers first:
// - a kprobe on security_socket_create(family, type, protocol, kern), the LSM entry every
//   socket() passes through, which costs only socket creation;
// - without kprobes, the capability:cap_capable tracepoint (6.14+): both kinds of socket need
//   CAP_NET_RAW, so their creation shows as a CAP_NET_RAW check (also one that fails, and also
//   one made through io_uring), and it costs only capability checks;
// - else the syscalls:sys_enter_socket tracepoint, which puts every syscall of the node on the
//   slow path (measured here: ~5% on a null syscall).
#[kprobe]
pub fn socket_create(ctx: ProbeContext) -> u32 {
    let kern: i32 = ctx.arg(3).unwrap_or(0);
    if kern != 0 {
        return 0;
    }
    let arg = |n: usize| ctx.arg::<i32>(n).unwrap_or(0) as u32;
    if !is_packet_or_raw(arg(0), arg(1)) {
        return 0;
    }
    // SAFETY: reads the current task and its saved registers through probe-read helpers only.
    let syscall = unsafe { current_syscall() };
    on_socket(arg(0), arg(1), arg(2), syscall);
    0
}

/// The call the current task is in, from its saved user registers; io_uring's own threads
/// (the SQPOLL thread, io-wq workers) run requests with registers saved when they were made,
/// so for them it is io_uring_enter.
#[inline(always)]
/// # Safety
/// Called from a tracing program of the current task; reads kernel memory through probe-read
/// helpers only.
unsafe fn current_syscall() -> u32 {
    let task = bpf_get_current_task_btf();
    if crate::read::read::<u32>(task.cast(), conf!(offsets.task_flags)) & PF_IO_WORKER != 0 {
        return NR_IO_URING_ENTER as u32;
    }
    let regs = conf!(regs);
    if regs.nr == NO_OFFSET {
        return SYSCALL_UNKNOWN;
    }
    let pt = bpf_task_pt_regs(task) as *const u8;
    (crate::read::read::<u64>(pt, regs.nr) & !X32_SYSCALL_BIT) as u32
}

// TP_PROTO(const struct cred *cred, struct user_namespace *target_ns,
//          const struct user_namespace *capable_ns, int cap, int ret)
#[btf_tracepoint(function = "cap_capable")]
pub fn cap_net_raw(ctx: BtfTracePointContext) -> i32 {
    let cap: i32 = ctx.arg(3);
    if cap != CAP_NET_RAW {
        return 0;
    }
    let ret: i32 = ctx.arg(4);
    // SAFETY: the program's own context; the callee reads kernel memory only through the probe-read
    // helpers (see its `# Safety`).
    unsafe { on_net_raw(ret == 0) };
    0
}

/// A CAP_NET_RAW check in a notebook: which call asked for it, from the saved user registers.
/// `granted`: the check passed, so the socket goes on to be created.
#[inline(always)]
/// # Safety
/// Called from the cap_capable tracepoint of the current task; reads kernel memory through probe-read helpers only.
unsafe fn on_net_raw(granted: bool) {
    let cgroup = current_cgroup();
    let Some(pol) = policy_of(cgroup) else { return };
    let task = bpf_get_current_task_btf();
    // io_uring's own threads (the SQPOLL thread, io-wq workers) run requests with registers
    // saved when they were created (io_uring_setup, for SQPOLL), so the number says nothing:
    // whatever made them check CAP_NET_RAW was an io_uring request.
    if crate::read::read::<u32>(task.cast(), conf!(offsets.task_flags)) & PF_IO_WORKER != 0 {
        emit_socket(cgroup, 0, 0, 0, NR_IO_URING_ENTER as u32, 0);
        return;
    }
    let regs = conf!(regs);
    if regs.nr == NO_OFFSET {
        emit_socket(cgroup, 0, 0, 0, SYSCALL_UNKNOWN, 0);
        return;
    }
    let pt = bpf_task_pt_regs(task) as *const u8;
    if pt.is_null() {
        return;
    }
    // Checked BTF loads from pt_regs at offsets the agent resolved.
    let reg = |off: u32| core::ptr::read_volatile(pt.wrapping_add(off as usize) as *const u64);
    let nr = reg(regs.nr) & !X32_SYSCALL_BIT;
    // The notebook was checked above: report the kinds that count, without looking again.
    let report = |f: u64, t: u64, p: u64| {
        if is_packet_or_raw(f as u32, t as u32) && !(granted && refused_at_creation(pol, f as u32, t as u32)) {
            emit_socket(cgroup, f as u32, t as u32, p as u32, nr as u32, 0)
        }
    };
    match nr {
        NR_SOCKET => report(reg(regs.args[0]), reg(regs.args[1]), reg(regs.args[2])),
        NR_I386_SOCKET => report(reg(regs.compat_args[0]), reg(regs.compat_args[1]), reg(regs.compat_args[2])),
        // Arguments in a ring or in user memory: the kind of socket is not known here.
        NR_IO_URING_ENTER | NR_I386_SOCKETCALL => emit_socket(cgroup, 0, 0, 0, nr as u32, 0),
        // setsockopt and the like: not a new socket.
        _ => {}
    }
}

// syscalls/sys_enter_socket: __syscall_nr at 8, then family, type, protocol as longs.
#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn sys_enter_socket(ctx: TracePointContext) -> i32 {
    // SAFETY: offsets inside the tracepoint's argument record, which the verifier bounds.
    let arg = |off: usize| unsafe { ctx.read_at::<u64>(off) }.unwrap_or(0) as u32;
    on_socket(arg(16), arg(24), arg(32), NR_SOCKET as u32);
    0
}

/// A packet socket, or a raw IP one (the type word also carries SOCK_CLOEXEC/NONBLOCK).
#[inline(always)]
fn is_packet_or_raw(family: u32, sock_type: u32) -> bool {
    family == AF_PACKET || ((family == AF_INET || family == AF_INET6) && sock_type & 0xf == SOCK_RAW)
}

/// Ahead of the socket's creation (the kprobe and tracepoint paths do not know whether the
/// capability check will pass: under enforcement, an inet raw socket refused for want of
/// CAP_NET_RAW goes unreported there).
#[inline(always)]
fn on_socket(family: u32, sock_type: u32, protocol: u32, syscall: u32) {
    if !is_packet_or_raw(family, sock_type) {
        return;
    }
    let cgroup = current_cgroup();
    if let Some(pol) = policy_of(cgroup) {
        if !refused_at_creation(pol, family, sock_type) {
            emit_socket(cgroup, family, sock_type, protocol, syscall, 0);
        }
    }
}

/// An inet raw socket under enforcement: `sock_create` refuses it and reports it, so the
/// packet/raw socket watch leaves it alone (one alert per socket, with what happened to it).
#[inline(always)]
fn refused_at_creation(pol: u32, family: u32, sock_type: u32) -> bool {
    pol & EGRESS_ENFORCE != 0 && (family == AF_INET || family == AF_INET6) && sock_type & 0xf == SOCK_RAW
}

// Sockets whose traffic no cgroup hook judges, at their creation (inet only: AF_PACKET sockets
// never come here, so they are only reported):
// - ICMP datagram ("ping") sockets need no capability where `net.ipv4.ping_group_range` admits
//   the user (containerd 2 and Docker open it to every group), and nothing sees what they send
//   or where: reported, and refused under enforcement. A `connect` of one still passes
//   `connect4/6` and its rules.
// - raw IP sockets (CAP_NET_RAW, in Docker's and containerd's default capabilities) send
//   packets of any protocol to any address: refused and reported under enforcement; in monitor
//   mode the packet/raw socket watch reports them, also when the capability check fails.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `sk` is the bpf_sock this hook was called with, valid while it runs; the verifier
    // checks these loads.
    let (family, sock_type, protocol) = unsafe { ((*sk).family, (*sk).type_, (*sk).protocol) };
    let inet = family == AF_INET || family == AF_INET6;
    let icmp = sock_type == SOCK_DGRAM
        && ((family == AF_INET && protocol == IPPROTO_ICMP) || (family == AF_INET6 && protocol == IPPROTO_ICMPV6));
    // Every inet socket on the node comes here: most leave on this test, before any lookup.
    if !icmp && !(inet && sock_type == SOCK_RAW) {
        return ALLOW;
    }
    let cgroup = current_cgroup();
    let Some(pol) = policy_of(cgroup) else { return ALLOW };
    let enforce = pol & EGRESS_ENFORCE != 0;
    if !icmp && !enforce {
        return ALLOW;
    }
    let verdict = if enforce { egress_verdict::DENIED } else { 0 };
    emit_socket(cgroup, family, sock_type, protocol, SYSCALL_UNKNOWN, verdict);
    if enforce {
        REFUSE
    } else {
        ALLOW
    }
}

#[inline(always)]
fn emit_socket(cgroup: u64, family: u32, sock_type: u32, protocol: u32, syscall: u32, verdict: u32) {
    let ev = SocketEvent {
        hdr: header(EventKind::Socket, aya_ebpf::helpers::bpf_get_current_pid_tgid(), cgroup),
        family,
        sock_type,
        protocol,
        syscall,
        verdict,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if EVENTS.output::<SocketEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Socket);
    }
    let _ = size_of::<SocketEvent>();
}
