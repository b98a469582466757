//! Egress: the connect/sendmsg hooks' rules and reports, and sockets no address hook judges.

use crate::{EventHeader, COMM_LEN};

pub mod egress_verdict {
    /// Refused in the kernel (EPERM), enforce mode.
    pub const DENIED: u32 = 1;
    /// Would be refused; monitor mode lets it through.
    pub const WOULD_DENY: u32 = 2;
}

/// `EGRESS_CG` values: the egress policy id in the low bits, enforcement in the top bit.
pub const EGRESS_ENFORCE: u32 = 1 << 31;

/// Emitted by the cgroup `connect4/6` and `sendmsg4/6` hooks for a destination the notebook's
/// egress policy does not allow. Allowed traffic produces no event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EgressEvent {
    pub hdr: EventHeader,
    /// AF_INET or AF_INET6 as the socket was opened (a v4-mapped v6 address is reported as v4).
    pub family: u32,
    /// IPPROTO_TCP / IPPROTO_UDP.
    pub protocol: u32,
    pub verdict: u32,
    /// Host byte order.
    pub port: u16,
    /// 1 when the hook was sendmsg (UDP send without connect).
    pub sendmsg: u8,
    pub v4: u8,
    /// IPv4 in the first 4 bytes when `v4`, else IPv6.
    pub addr: [u8; 16],
    /// The notebook whose policy judged it (`dns::DnsSocket::subject`), to name the address
    /// from that notebook's DNS answers.
    pub subject: u64,
    pub comm: [u8; COMM_LEN],
}

/// Emitted at `socket()` of a packet socket (AF_PACKET), a raw IP socket or an ICMP datagram
/// ("ping") socket in a notebook.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketEvent {
    pub hdr: EventHeader,
    /// 0 when the socket was asked for in a way whose arguments the hook cannot read
    /// (io_uring, i386 `socketcall`): family, type and protocol are then unknown.
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    /// The system call it came through (native number; `SYSCALL_UNKNOWN` when not known).
    pub syscall: u32,
    /// `egress_verdict::DENIED` when the kernel refused the socket; 0 when it was only seen.
    pub verdict: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

pub const SYSCALL_UNKNOWN: u32 = u32::MAX;

/// Key of the `EGRESS_RULES` LPM trie (after the trie's own prefix length): policy, protocol and
/// port are matched in full (64 bits of prefix), then the address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EgressKey {
    /// Network byte order, so the LPM trie compares the policy id byte-wise first.
    pub policy: u32,
    /// 0 = any, else IPPROTO_TCP / IPPROTO_UDP.
    pub protocol: u8,
    /// 4 or 6 (v4 addresses are matched in v4 tries of the key space).
    pub family: u8,
    /// 0 = any port; network byte order.
    pub port: u16,
    pub addr: [u8; 16],
}

/// Bits of `EgressKey` before the address: policy (32) + protocol (8) + family (8) + port (16).
pub const EGRESS_KEY_FIXED_BITS: u32 = 64;

/// `EGRESS_RULES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    /// 1 allow, 2 deny.
    pub action: u32,
    /// Precedence when several rules match: address prefix length × 4, + 2 for a specific
    /// port, + 1 for a specific protocol. The highest wins; on a tie, deny wins.
    pub rank: u32,
}

pub const EGRESS_ALLOW: u32 = 1;
pub const EGRESS_DENY: u32 = 2;
/// Denied by a switch (`nonPrivateIPs`, `privateIPs` off): an allowed name resolved to the
/// address may still allow it, where an explicit deny (the lists, metadata, link-local) holds.
pub const EGRESS_DENY_SWITCH: u32 = 3;
pub const MAX_EGRESS_RULES: u32 = 16384;
