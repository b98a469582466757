//! Egress by name: what the kernel keeps of the DNS answers a notebook receives, and the
//! policy's allowed names, in the shapes both sides read.
//!
//! - `DNS_SOCKS` (socket cookie → [`DnsSocket`]): a notebook socket that sent to an allowed
//!   DNS server (port 53, UDP or TCP); only answers on such sockets, from that server, are read.
//! - `DNS_NAMES` ([`NameKey`] → [`NameNode`]): the policy's allowed names as a trie of labels,
//!   the last label first (`org` → `example` → `pypi`), exact bytes (no hash to collide).
//! - `DNS_ALLOWED` ([`ResolvedKey`] → [`Resolved`]): an address an allowed name resolved to,
//!   for one notebook, until the answer's TTL (clamped) runs out.
//! - `DOMAIN_PORTS` ([`DomainPortKey`] → mask): which of a policy's domain entries allow a
//!   protocol and port; `DNS_TTL` (policy → [`DnsTtl`]): the TTL floor and ceiling.

/// Labels of a name the kernel follows (deeper names match no entry).
pub const MAX_NAME_LABELS: usize = 16;
/// Bytes of one label (RFC 1035).
pub const LABEL_MAX: usize = 63;
/// Domain entries per egress policy: one bit each in a `u64` mask.
pub const MAX_DOMAINS_PER_POLICY: usize = 64;
/// Addresses one answer reports to the agent (every A/AAAA is allowed in the kernel).
pub const DNS_EVENT_ADDRS: usize = 8;
/// Bytes of the question name as it is on the wire.
pub const DNS_NAME_WIRE: usize = 256;
/// Answer records the kernel reads from one message.
pub const MAX_ANSWERS: u32 = 8;

pub const MAX_DNS_SOCKETS: u32 = 16384;
pub const MAX_DNS_NAMES: u32 = 16384;
pub const MAX_DNS_ALLOWED: u32 = 65536;
pub const MAX_DOMAIN_PORTS: u32 = 16384;

/// Top bit of a subject: a notebook known by process scope (the scope id below), not by cgroup.
pub const SUBJECT_SCOPE: u64 = 1 << 63;

pub mod names {
    pub const DNS_SOCKS: &str = "DNS_SOCKS";
    pub const DNS_NAMES: &str = "DNS_NAMES";
    pub const DNS_ALLOWED: &str = "DNS_ALLOWED";
    pub const DOMAIN_PORTS: &str = "DOMAIN_PORTS";
    pub const DNS_TTL: &str = "DNS_TTL";
    pub const PROG_DNS_INGRESS: &str = "dns_ingress";
}

/// A notebook socket that sent a query to an allowed DNS server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSocket {
    /// The notebook: its registered cgroup id, or `SUBJECT_SCOPE | scope`.
    pub subject: u64,
    /// Cgroup and process of the sender, for the agent's attribution of the answer.
    pub cgroup: u64,
    pub pid_tgid: u64,
    /// Kernel egress policy id (without `EGRESS_ENFORCE`).
    pub policy: u32,
    /// Server port, network byte order.
    pub port: u16,
    /// 4 or 6 (a v4-mapped server is 4).
    pub family: u8,
    pub protocol: u8,
    pub server: [u8; 16],
}

/// `DNS_NAMES` key: one label under `parent` (0: the policy's root) in policy `policy`.
/// 8-aligned with the label first, so the kernel lower-cases it a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    /// Lower-case, zero-padded.
    pub label: [u8; 64],
    pub policy: u32,
    pub parent: u32,
    pub len: u32,
    pub _pad: u32,
}

impl Default for NameKey {
    fn default() -> Self {
        Self { label: [0; 64], policy: 0, parent: 0, len: 0, _pad: 0 }
    }
}

/// `DNS_NAMES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameNode {
    /// This node's id, the `parent` of the labels below it (never 0).
    pub id: u32,
    pub _pad: u32,
    /// Domain entries naming exactly this name.
    pub exact: u64,
    /// Domain entries `*.this` (names strictly below).
    pub wild: u64,
}

/// `DNS_ALLOWED` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResolvedKey {
    pub subject: u64,
    pub family: u8,
    pub _pad: [u8; 7],
    pub addr: [u8; 16],
}

/// `DNS_ALLOWED` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// `bpf_ktime_get_boot_ns` after which the address is no longer allowed.
    pub expires_ns: u64,
    /// Domain entries (of `policy`) whose names resolved here.
    pub domains: u64,
    /// The policy the mask belongs to: after a reload, names are looked up again.
    pub policy: u32,
    pub _pad: u32,
}

/// `DOMAIN_PORTS` key: protocol 0 = any, port 0 = any (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainPortKey {
    pub policy: u32,
    pub protocol: u8,
    pub _pad: u8,
    pub port: u16,
}

/// `DNS_TTL` value: seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsTtl {
    pub min: u32,
    pub max: u32,
}

/// Emitted for each DNS answer a notebook receives from an allowed server.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    pub hdr: crate::EventHeader,
    pub subject: u64,
    /// Domain entries the question name matched (0: none; nothing was allowed).
    pub domains: u64,
    /// TTL the addresses were allowed for, seconds (after the floor and ceiling).
    pub ttl: u32,
    /// Bytes of `qname` (wire format, labels with their length bytes, no final 0).
    pub qname_len: u16,
    /// Addresses in `addrs`; bit i of `v4` says `addrs[i]` is IPv4 (first 4 bytes).
    pub n_addrs: u8,
    pub v4: u8,
    /// Answer records with an address beyond `addrs` (allowed, not reported).
    pub more: u32,
    pub protocol: u32,
    pub qname: [u8; DNS_NAME_WIRE],
    pub addrs: [[u8; 16]; DNS_EVENT_ADDRS],
}

/// Labels of a wire-format name (no compression), in order; None if malformed.
pub fn wire_labels(wire: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let mut i = 0;
    while i < wire.len() {
        let n = wire[i] as usize;
        if n == 0 || n > LABEL_MAX || i + 1 + n > wire.len() {
            return None;
        }
        i += 1 + n;
    }
    let mut at = 0;
    Some(core::iter::from_fn(move || {
        let n = *wire.get(at)? as usize;
        let label = wire.get(at + 1..at + 1 + n)?;
        at += 1 + n;
        Some(label)
    }))
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no padding with meaning.
    unsafe impl aya::Pod for super::DnsSocket {}
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::NameNode {}
    unsafe impl aya::Pod for super::ResolvedKey {}
    unsafe impl aya::Pod for super::Resolved {}
    unsafe impl aya::Pod for super::DomainPortKey {}
    unsafe impl aya::Pod for super::DnsTtl {}
}
