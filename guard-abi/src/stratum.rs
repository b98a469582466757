//! Stratum on the wire: the first payload a notebook's TCP flow sends is read in the kernel
//! (a cgroup skb egress program) and matched for a mining JSON-RPC call (`"method":"login"`,
//! `mining.subscribe`, `mining.authorize`, `mining.submit`, …) on any port. Under enforcement
//! that payload and everything after it on the flow is dropped.

pub const MAX_STRATUM_FLOWS: u32 = 16384;
/// Bytes of a first payload read.
pub const STRATUM_PEEK: usize = 256;
/// Bytes of the method name reported.
pub const METHOD_LEN: usize = 24;

pub mod names {
    pub const STRATUM_FLOWS: &str = "STRATUM_FLOWS";
    pub const PROG_STRATUM_EGRESS: &str = "stratum_egress";
}

/// `STRATUM_FLOWS` value: a notebook TCP socket that connected (state `PENDING`: its first
/// payload is still to be read), or one whose first payload was a mining call (`BLOCKED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub subject: u64,
    pub cgroup: u64,
    pub pid_tgid: u64,
    pub state: u32,
    /// `EGRESS_ENFORCE` set: drop a mining call.
    pub enforce: u32,
    /// Destination, as connected.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

pub const FLOW_PENDING: u32 = 1;
pub const FLOW_BLOCKED: u32 = 2;

/// Emitted for a first payload that is a mining call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StratumEvent {
    pub hdr: crate::EventHeader,
    pub subject: u64,
    /// `egress_verdict::DENIED` when dropped, else `WOULD_DENY`.
    pub verdict: u32,
    pub port: u16,
    pub v4: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
    /// The method's name as sent, NUL-padded.
    pub method: [u8; METHOD_LEN],
}
