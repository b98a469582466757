//! The kernel/user ABI of notebook-guard: every type that crosses the BPF boundary is defined
//! here once, `#[repr(C)]`, and compiled into both `guard-ebpf` (no_std) and `guard`.
//!
//! Records in the `EVENTS` ring buffer all start with [`EventHeader`]; `kind` says which struct
//! follows. An exec ([`ExecWire`]) is variable-length: its strings follow its head, packed, so
//! a short command takes about 150 bytes of the ring, not the 6 KiB its longest form needs.
#![no_std]

mod config;
pub mod dns;
mod egress;
mod enforce;
mod exec;
pub mod fanout;
pub mod kconst;
pub mod recorder;
pub mod stratum;
pub mod written;

pub use config::*;
pub use egress::*;
pub use enforce::*;
pub use exec::*;
pub use recorder::{rec_gen, RecorderConfig, RecorderCpuCache, SyscallSet};

/// Bytes of `comm` (the kernel's TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes kept of the path the kernel executed and of a `#!` interpreter path.
pub const PATH_LEN: usize = 512;
/// Bytes kept of the loaded file's dentry name (e.g. `memfd:x`, `true`).
pub const DNAME_LEN: usize = 64;
/// Bytes kept of the NUL-separated argv block. A power of two, so the verifier can bound it.
pub const ARGS_LEN: usize = 4096;
/// Deepest cgroup level the kernel checks against the watch list (root is level 0).
pub const MAX_CGROUP_DEPTH: u32 = 16;
/// Entries in the watched-cgroup map.
pub const MAX_WATCHED_CGROUPS: u32 = 16384;

/// Names of the maps and programs, shared so the loader and the object cannot drift apart.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const RING_FILL: &str = "RING_FILL";
    pub const AGENT_POLLING: &str = "AGENT_POLLING";
    pub const ENFORCED: &str = "ENFORCED";
    pub const ALLOWED: &str = "ALLOWED";
    pub const MARKS: &str = "MARKS";
    pub const SERVERS: &str = "SERVERS";
    pub const LOST: &str = "LOST";
    /// Writes the programs could not make (a full map), per CPU, by [`crate::map_full`] slot.
    pub const MAP_FULL: &str = "MAP_FULL";
    pub const WATCHED: &str = "WATCHED";
    pub const SCRATCH: &str = "SCRATCH";
    pub const CONFIG: &str = "CONFIG";
    pub const PROG_EXEC: &str = "sched_process_exec";
    pub const PROG_FORK: &str = "sched_process_fork";
    pub const PROG_EXIT: &str = "sched_process_exit";
    pub const INCARNATIONS: &str = "INCARNATIONS";
    pub const SCOPES: &str = "SCOPES";
    pub const KERNEL_COMMANDS: &str = "KERNEL_COMMANDS";
    pub const LAUNCHERS: &str = "LAUNCHERS";
    pub const PROG_CGROUP_MKDIR: &str = "cgroup_mkdir";
    pub const EGRESS_CG: &str = "EGRESS_CG";
    pub const EGRESS_RULES: &str = "EGRESS_RULES";
    pub const PROG_CONNECT4: &str = "connect4";
    pub const PROG_CONNECT6: &str = "connect6";
    pub const PROG_SENDMSG4: &str = "sendmsg4";
    pub const PROG_SENDMSG6: &str = "sendmsg6";
    pub const PROG_SOCKET_KPROBE: &str = "socket_create";
    pub const PROG_SOCKET_TRACEPOINT: &str = "sys_enter_socket";
    pub const PROG_SOCKET_CAPABLE: &str = "cap_net_raw";
    pub const PROG_SOCK_CREATE: &str = "sock_create";
    pub const REC_CONFIG: &str = "REC_CONFIG";
    pub const REC_TARGETS: &str = "REC_TARGETS";
    pub const REC_CACHE: &str = "REC_CACHE";
    pub const REC_SETS: &str = "REC_SETS";
    pub const REC_CPU: &str = "REC_CPU";
    pub const REC_GEN: &str = "REC_GEN";
    pub const PROG_RECORD: &str = "record_sys_enter";
    pub const PROG_EMPTY_SYS_ENTER: &str = "empty_sys_enter";
    /// The recorder's cache invalidation on task creation and cgroup migration.
    pub const PROG_REC_TASK_CREATED: &str = "rec_task_created";
    pub const PROG_REC_TASK_MOVED: &str = "rec_task_moved";
}

/// Event kinds; also the index into the per-CPU `LOST` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 0,
    Fork = 1,
    Exit = 2,
    Egress = 3,
    Socket = 4,
    Cgroup = 5,
    Dns = 6,
    Fanout = 7,
    Stratum = 8,
    Written = 9,
}

/// Number of slots in `LOST` (one per [`EventKind`]).
pub const EVENT_KINDS: u32 = 10;

impl EventKind {
    pub const ALL: [EventKind; EVENT_KINDS as usize] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::Egress,
        EventKind::Socket,
        EventKind::Cgroup,
        EventKind::Dns,
        EventKind::Fanout,
        EventKind::Stratum,
        EventKind::Written,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Fork => "fork",
            EventKind::Exit => "exit",
            EventKind::Egress => "egress",
            EventKind::Socket => "socket",
            EventKind::Cgroup => "cgroup",
            EventKind::Dns => "dns",
            EventKind::Fanout => "fanout",
            EventKind::Stratum => "stratum",
            EventKind::Written => "written",
        }
    }
}

/// Layout version of the ring's records, in the top half of [`EventHeader::kind`]. Bump it when
/// any record's layout changes: an agent adopts the previous one's pinned ring, which holds
/// whatever that one's programs wrote after it stopped, in their layout.
pub const RECORD_FORMAT: u32 = 6;

/// Layout version of the pinned maps (their key and value types). Maps are pinned under
/// `maps-v<PIN_LAYOUT>`: an agent whose layout differs from the pinned one's does not adopt
/// those maps (it would read and write them in another shape) but replaces them.
pub const PIN_LAYOUT: u32 = 4;

/// Common prefix of every ring-buffer record. `pid`/`tgid` are in the initial PID namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// [`EventKind`] in the low 16 bits, [`RECORD_FORMAT`] in the high 16.
    pub kind: u32,
    pub cpu: u32,
    /// CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns), so suspend does not skew it.
    pub ktime_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// cgroup v2 id (the kernfs inode of the cgroup directory).
    pub cgroup_id: u64,
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::SyscallSet {}
    unsafe impl aya::Pod for super::RecorderConfig {}
    unsafe impl aya::Pod for super::RecorderCpuCache {}
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no padding with meaning.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::EgressKey {}
    unsafe impl aya::Pod for super::EgressRule {}
    unsafe impl aya::Pod for super::Placement {}
    unsafe impl aya::Pod for super::ByteKey {}
}
