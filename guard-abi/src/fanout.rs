//! Fan-out: a notebook process reaching more distinct destinations (address and port) within
//! a window than the policy allows: a scan, or a miner's pool hunt. Counted in the kernel on
//! every connect and UDP send of a notebook, refused ones included; reported once per window.

pub const MAX_FANOUT_SEEN: u32 = 65536;
pub const MAX_FANOUT_PROCS: u32 = 16384;

pub mod names {
    pub const FANOUT_SEEN: &str = "FANOUT_SEEN";
    pub const FANOUT_COUNT: &str = "FANOUT_COUNT";
    pub const FANOUT_CONF: &str = "FANOUT_CONF";
}

/// `FANOUT_CONF[0]`: the threshold (0: off) and the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutConf {
    pub destinations: u32,
    pub _pad: u32,
    pub window_ns: u64,
}

/// `FANOUT_SEEN` key: a process and one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeenKey {
    pub tgid: u32,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    pub addr: [u8; 16],
}

/// `FANOUT_COUNT` value: distinct destinations in the process's current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanCount {
    pub window_start: u64,
    pub count: u32,
    pub reported: u32,
}

/// Emitted when a process's count reaches the threshold within its window.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FanoutEvent {
    pub hdr: crate::EventHeader,
    pub subject: u64,
    pub destinations: u32,
    /// Since the window opened.
    pub elapsed_ms: u32,
    /// The destination that reached the threshold.
    pub port: u16,
    pub v4: u8,
    pub protocol: u8,
    pub _pad: u32,
    pub addr: [u8; 16],
    pub comm: [u8; crate::COMM_LEN],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no padding with meaning.
    unsafe impl aya::Pod for super::FanoutConf {}
    unsafe impl aya::Pod for super::SeenKey {}
    unsafe impl aya::Pod for super::FanCount {}
}
