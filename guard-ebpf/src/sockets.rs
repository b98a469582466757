//! Packet, raw and ICMP datagram sockets in notebooks: sniffing, crafted packets and ICMP
//! egress, none of which the cgroup socket-address hooks see. Reported at creation; inet ones
//! refused there under enforcement.

use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, cgroup_sock, kprobe, tracepoint},
    programs::{BtfTracePointContext, ProbeContext, SockContext, TracePointContext},
};
use guard_abi::{
    egress_verdict,
    kconst::{
        AF_INET, AF_INET6, AF_PACKET, CAP_NET_RAW, IPPROTO_ICMP, IPPROTO_ICMPV6, NR_I386_SOCKET, NR_I386_SOCKETCALL,
        NR_IO_URING_ENTER, NR_SOCKET, PF_IO_WORKER, SOCK_DGRAM, SOCK_RAW, X32_SYSCALL_BIT,
    },
    recorder::NO_OFFSET,
    EventKind, SocketEvent, EGRESS_ENFORCE, SYSCALL_UNKNOWN,
};

use crate::{
    egress::{policy_of, ALLOW, REFUSE},
    read::current_cgroup,
    ring::{count_lost, header, submit_flags, EVENTS},
    CONFIG,
};

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
