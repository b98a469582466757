//! The kernel/user ABI of notebook-guard: every type that crosses the BPF boundary is defined
//! here once, `#[repr(C)]`, and compiled into both `guard-ebpf` (no_std) and `guard`.
//!
//! Records in the `EVENTS` ring buffer all start with [`EventHeader`]; `kind` says which struct
//! follows. An exec ([`ExecWire`]) is variable-length: its strings follow its head, packed, so
//! a short command takes about 150 bytes of the ring, not the 6 KiB its longest form needs.
#![no_std]

pub mod dns;
pub mod fanout;
pub mod kconst;
pub mod stratum;
pub mod written;

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

/// `ExecHead::flags` bits.
pub mod exec_flags {
    /// argv was longer than `ARGS_LEN`; `args` holds the first `ARGS_LEN` bytes.
    pub const ARGS_TRUNCATED: u32 = 1 << 0;
    pub const FILENAME_TRUNCATED: u32 = 1 << 1;
    pub const INTERP_TRUNCATED: u32 = 1 << 2;
    /// The argv block could not be read from the new process's memory.
    pub const ARGS_UNREADABLE: u32 = 1 << 3;
    /// The kernel ran an interpreter (`#!` script or binfmt_misc): `interp` is set.
    pub const HAS_INTERP: u32 = 1 << 4;
    /// The process is in a cgroup under enforcement.
    pub const ENFORCED: u32 = 1 << 5;
    /// Enforcement killed the process (SIGKILL before its first instruction).
    pub const KILLED: u32 = 1 << 6;
    /// The process descends from a Python process of the notebook (kernel's view).
    pub const UNDER_PYTHON: u32 = 1 << 7;
}

/// The `ENFORCED` key present while any cgroup is enforced (no cgroup has id 0). Without it
/// (monitor mode) exec skips the walk up the cgroup tree, and fork and exit keep no
/// per-process entries (`MARKS`, `SERVERS`).
pub const ENFORCED_ANY: u64 = 0;

/// `ENFORCED` map values: enforcement on, and the allowances that apply.
pub mod enforce_flags {
    pub const ON: u32 = 1 << 0;
    pub const TERMINALS: u32 = 1 << 1;
    pub const PIP_MAGIC: u32 = 1 << 2;
}

/// `ALLOWED` map values: what an identity may do in an enforced cgroup.
pub mod allow_class {
    /// A Python interpreter: always runs, and marks its descendants.
    pub const PYTHON: u32 = 1;
    /// A helper: runs when its parent is Python (arguments are checked by the agent).
    pub const HELPER: u32 = 2;
    /// A shell: runs only as a terminal (parent is the server) or for %pip.
    pub const SHELL: u32 = 3;
    /// The binary of a sanctioned kernel (an admin-installed kernelspec's argv[0]): runs when
    /// its parent is Python (the server). A launcher that is a script (R's wrapper) is known by
    /// its path instead (`LAUNCHERS`, whose values are these classes), since the kernel keeps
    /// no handle on a `#!` script; so is a helper that is a script.
    pub const LAUNCHER: u32 = 4;
    /// A helper that also runs when its parent is a helper (git → git-remote-https, gcc → cc1).
    pub const CHAINED_HELPER: u32 = 5;
}

/// `MARKS` map values (per tgid, inherited across fork).
pub mod marks {
    pub const UNDER_PYTHON: u32 = 1 << 0;
    /// A Jupyter terminal and everything it starts.
    pub const EXEMPT: u32 = 1 << 1;
    /// A `%pip` shell: it may exec only Python.
    pub const PIP_SHELL: u32 = 1 << 2;
    /// A kernel's launcher and its forks: their next exec (the kernel itself, the launcher's own
    /// helpers) runs, and what it starts is judged from then on.
    pub const LAUNCHING: u32 = 1 << 3;
    /// A helper that is a `#!` script: its image is its interpreter (a shell), so its forks
    /// learn from this that their parent is a helper. Cleared at their exec.
    pub const HELPER_SCRIPT: u32 = 1 << 4;
    /// The process's scope (`SCOPES` key, 0: none) sits in the top half.
    pub const SCOPE_SHIFT: u32 = 16;
}

/// The nanoseconds of an inode's change time are below 10^9 < 2^30; kernels with multigrain
/// timestamps (6.13+) keep a flag in bit 31 of the same word (`I_CTIME_QUERIED`).
pub const CTIME_NSEC_MASK: u32 = (1 << 30) - 1;

/// Key of the `ALLOWED` map: a file identity as the kernel sees it, with the inode's change
/// time: a file modified after it was trusted (written, truncated, chmod'ed) no longer matches,
/// even where its device and inode stay the same (an overlayfs copy-up keeps the inode number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Kernel dev_t: MAJOR << 20 | MINOR.
    pub dev: u32,
    pub ctime_nsec: u32,
    pub ino: u64,
    pub ctime_sec: i64,
}

/// Entries in the enforcement maps.
pub const MAX_ALLOWED: u32 = 65536;
pub const MAX_MARKED: u32 = 65536;

/// Slots of the programs' failed-write counters (`MAP_FULL`): which map a write the kernel
/// side makes on its own (not the agent) did not fit.
pub mod map_full {
    /// MARKS, at an exec's verdict or a fork's inheritance.
    pub const MARKS: u32 = 0;
    /// ENFORCED or EGRESS_CG, placing a notebook cgroup made again.
    pub const CGROUPS: u32 = 1;
    pub const SLOTS: u32 = 2;
    /// The map each slot names in the agent's alert.
    pub const MAPS: [&str; SLOTS as usize] = [super::names::MARKS, super::names::ENFORCED];
}
/// Notebook servers registered (`SERVERS`).
pub const MAX_SERVERS: u32 = 4096;

/// What the kernel applies to a notebook it knows by something other than a registered cgroup
/// id, in the encodings of `ENFORCED` and `EGRESS_CG`:
/// - `INCARNATIONS`: notebook cgroups are often made again at the same path (a TLJH or
///   SystemdSpawner unit restarted, a DockerSpawner container restarted), each time with a new
///   id. It maps the hash of the path ([`cgroup_path_hash`]) to this; the `cgroup_mkdir`
///   program writes it for the new id before any process can enter the cgroup.
/// - `SCOPES`: notebooks that share a cgroup with processes that are not notebooks
///   (LocalProcessSpawner servers run in the hub's cgroup) are known by process: the server
///   and its descendants carry a scope in their `MARKS` (`marks::SCOPE_SHIFT`), inherited at
///   fork, and the scope says what applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Placement {
    /// `enforce_flags` (0: not enforced).
    pub enforce: u32,
    /// `EGRESS_CG` value (0: no egress policy).
    pub egress: u32,
}

/// The `SCOPES` key present while any scope exists: without it, connects in cgroups without an
/// egress policy skip the per-process lookup.
pub const SCOPE_ANY: u32 = 0;
pub const MAX_SCOPES: u32 = 4096;

pub const MAX_INCARNATIONS: u32 = 4096;
/// Bytes of a cgroup path the hash covers; longer paths are not remembered.
pub const INCARNATION_PATH_MAX: usize = 256;

/// FNV-1a (64-bit) of a cgroup path as the kernel's cgroup tracepoints print it (relative to
/// the hierarchy's root, with a leading `/`), stopping at a NUL or after
/// [`INCARNATION_PATH_MAX`] bytes. The same code runs on both sides of the ABI.
#[inline(always)]
pub fn cgroup_path_hash(path: &[u8]) -> u64 {
    let mut h: u64 = FNV_OFFSET;
    let mut i = 0;
    while i < INCARNATION_PATH_MAX && i < path.len() {
        let b = path[i];
        if b == 0 {
            break;
        }
        h = fnv_step(h, b);
        i += 1;
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[inline(always)]
fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Longest byte string a [`ByteKey`] holds: a command (argv, NUL-terminated strings back to
/// back) in `KERNEL_COMMANDS`, a trusted script's path in `LAUNCHERS`.
pub const BYTE_KEY_MAX: usize = 64;
pub const MAX_KERNEL_COMMANDS: u32 = 256;
/// A kernel command whose last argument ends in this many `?` matches any letters and digits
/// there: the random suffix mkstemp/mkdtemp give a temp name (R's `rm -Rf /tmp/RtmpXXXXXX`).
pub const RANDOM_TAIL: usize = 6;
pub const MAX_LAUNCHERS: u32 = 1024;

/// A short byte string as a map key: its scope (0 for commands; for a path, the mount
/// namespace it is resolved in), its length and its bytes, zero-padded. Built from whole words
/// with the bytes past the length masked off, so the kernel needs no loop over bytes (a byte
/// loop in the exec decision made the verifier's work explode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ByteKey {
    pub scope: u32,
    pub len: u32,
    pub words: [u64; BYTE_KEY_MAX / 8],
}

impl ByteKey {
    /// The key of `bytes` in `scope`; None when it is too long.
    pub fn of(scope: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() >= BYTE_KEY_MAX {
            return None;
        }
        let mut k = Self { scope, len: bytes.len() as u32, ..Self::default() };
        let mut i = 0;
        while i < bytes.len() {
            k.words[i / 8] |= (bytes[i] as u64) << (8 * (i % 8));
            i += 1;
        }
        Some(k)
    }

    /// The bytes of word `i` of a string of `len` bytes that belong to it (little-endian).
    #[inline(always)]
    pub fn word_mask(len: usize, i: usize) -> u64 {
        let start = i * 8;
        if len >= start + 8 {
            u64::MAX
        } else if len <= start {
            0
        } else {
            (1u64 << ((len - start) * 8)) - 1
        }
    }
}

/// The scalar part of an exec record ([`ExecWire`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecHead {
    pub hdr: EventHeader,
    /// tgid of `real_parent`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    /// The true argument count (`bprm->argc`), even when `args` is truncated.
    pub argc: u32,
    /// Bytes of argv that are valid (NUL-separated strings).
    pub args_len: u32,
    /// Identity of the file actually loaded (`bprm->file`): kernel dev_t (MAJOR<<20|MINOR) + inode.
    pub exe_dev: u32,
    /// Link count of that file: 0 for memfds and deleted files.
    pub exe_nlink: u32,
    pub exe_ino: u64,
    /// The thread id that called execve (differs from pid when a non-leader thread execs).
    pub old_pid: u32,
    /// Bits 0..2: stdin, stdout, stderr are sockets (a reverse shell's signature).
    pub stdio_sockets: u32,
    pub comm: [u8; COMM_LEN],
    /// Bytes of `filename`, `interp` and `exe_name`, without their NUL.
    pub filename_len: u16,
    pub interp_len: u16,
    pub exe_name_len: u16,
    pub _pad: u16,
    /// The loaded file's inode change time: part of its identity (see [`FileKey`]).
    pub exe_ctime_sec: i64,
    pub exe_ctime_nsec: u32,
    pub _pad2: u32,
}

/// Emitted at `sched_process_exec`: after the new image is loaded, before its first
/// instruction. The head, then the bytes of `bprm->filename` (the path as the kernel resolved
/// it: `/dev/fd/N` for fd-based exec), `bprm->interp` (when it differs from the filename), the
/// loaded file's dentry name and argv, packed (their lengths are in the head); the kernel
/// assembles it in place, so only the record's own bytes go to the ring. Fixed places for each
/// string instead cost every exec 1.2 KiB of mostly zeros, written by the kernel and read,
/// copied and decoded by the agent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecWire {
    pub head: ExecHead,
    pub tail: [u8; EXEC_TAIL_MAX],
}

/// Bytes of [`ExecHead`]: the wire size is this plus the four lengths.
pub const EXEC_HEAD_LEN: usize = core::mem::size_of::<ExecHead>();

/// Room the kernel needs to pack the tail with offsets masked to powers of two, which is how
/// the verifier sees each copy stay inside it (filename at 0, up to PATH_LEN; interp below 512;
/// exe name below 1024; argv below 2048, up to ARGS_LEN).
pub const EXEC_TAIL_MAX: usize = 2048 + ARGS_LEN;

// The kernel's masks rely on these sizes.
const _: () = assert!(PATH_LEN == 512 && DNAME_LEN <= 512 && ARGS_LEN.is_power_of_two());

/// Emitted at `sched_process_fork` for new processes (not threads). The header is the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub hdr: EventHeader,
    pub child_pid: u32,
    pub child_tgid: u32,
}

/// Emitted at `sched_process_exit` of a thread-group leader.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// `task->exit_code` as wait(2) encodes it.
    pub exit_code: u32,
    pub _pad: u32,
}

/// `EgressEvent::verdict`
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

/// Emitted at `cgroup_mkdir` for a notebook cgroup made again at a path the agent placed (a
/// restarted unit or container): its id (in the header's `cgroup_id`) and path. In the ring before anything its processes do, so the agent knows where every event
/// came from even when the cgroup is gone by the time it reads them (a server restarted at
/// once, twice).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    pub hdr: EventHeader,
    /// Bytes of `path`, without its NUL.
    pub path_len: u32,
    pub _pad: u32,
    pub path: [u8; INCARNATION_PATH_MAX],
}

/// Where a system call's number and first three arguments sit in the task's saved user
/// registers (`struct pt_regs`), native and 32-bit compat: byte offsets read from BTF, or
/// `recorder::NO_OFFSET` on an architecture whose layout the agent does not know.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRegs {
    pub nr: u32,
    pub args: [u32; 3],
    pub compat_args: [u32; 3],
    pub _pad: u32,
}

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

/// Byte offsets of the kernel struct fields the programs read, resolved by the agent from the
/// running kernel's BTF at start-up. Rust eBPF has no CO-RE; this is how the same object
/// survives other kernels' layouts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_file: u32,
    pub bprm_filename: u32,
    pub bprm_interp: u32,
    pub bprm_argc: u32,
    pub file_inode: u32,
    /// `file.f_path.dentry`
    pub file_dentry: u32,
    /// `dentry.d_name.name`
    pub dentry_name: u32,
    pub inode_ino: u32,
    pub inode_nlink: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `inode.i_mode` (umode_t, 2 bytes)
    pub inode_mode: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub mm_exe_file: u32,
    /// `task_struct.flags` (PF_*)
    pub task_flags: u32,
    /// `task_struct.cgroups` (struct css_set *)
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`: the task's cgroup v2 cgroup
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.root`: which hierarchy a cgroup belongs to
    pub cgroup_root: u32,
    /// `cgroup.kn` (struct kernfs_node *)
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64): the cgroup id user space sees as the directory's inode
    pub kernfs_node_id: u32,
    /// The inode's change time: seconds (8 bytes) and nanoseconds (the low 4 bytes, wherever
    /// the kernel keeps them in a `long`).
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    /// `task_struct.nsproxy`, `nsproxy.mnt_ns`, `mnt_namespace.ns.inum`: the mount namespace a
    /// path is resolved in.
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
}

/// Read-only configuration, written into the object's `.rodata` before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent's own tgid: its processes never produce events.
    pub agent_tgid: u32,
    /// 1: report every cgroup; 0: only cgroups in `WATCHED` and their descendants.
    pub watch_all: u32,
    /// Wake the consumer only once this many bytes are waiting (0: kernel's adaptive default).
    /// Below it the agent's poll timer drains the ring: fewer wake-ups under load.
    pub wakeup_bytes: u64,
    pub offsets: KernelOffsets,
    pub regs: SyscallRegs,
}

/// The seccomp recorder: a separate object whose `sys_enter` program is attached only while a
/// recording (or a drift watch) runs, because an attached `sys_enter` program taxes every
/// syscall on the node.
pub mod recorder {
    /// Syscall numbers kept per architecture (x86_64 and i386 tables are below 512; x32 numbers
    /// start at 512 once the x32 bit is cleared).
    pub const SYSCALL_BITS: usize = 1024;
    pub const WORDS: usize = SYSCALL_BITS / 64;
    /// Architectures told apart: the task's native ABI, the 32-bit x86 ABI (`int 0x80`,
    /// ia32 processes) and x32.
    pub const ARCHES: usize = 3;
    pub const ARCH_NATIVE: usize = 0;
    pub const ARCH_COMPAT: usize = 1;
    pub const ARCH_X32: usize = 2;
    /// x86's `__X32_SYSCALL_BIT`: x32 calls carry it in the syscall number.
    pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;
    /// Recording slots (one per recorded cgroup).
    pub const MAX_TARGETS: u32 = 256;
    /// cgroup id → slot cache; a miss walks the ancestors once.
    pub const CACHE_ENTRIES: u32 = 16384;
    /// `RecorderConfig::thread_status` when the kernel has no `thread_info.status`.
    pub const NO_OFFSET: u32 = u32::MAX;
}

/// One recording slot: a bit per syscall number and architecture, set once.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallSet {
    pub words: [u64; recorder::ARCHES * recorder::WORDS],
    /// Calls whose number was beyond `SYSCALL_BITS` (should stay 0; reported if not).
    pub out_of_range: u64,
}

impl Default for SyscallSet {
    fn default() -> Self {
        Self { words: [0; recorder::ARCHES * recorder::WORDS], out_of_range: 0 }
    }
}

impl SyscallSet {
    pub fn contains(&self, arch: usize, nr: usize) -> bool {
        arch < recorder::ARCHES
            && nr < recorder::SYSCALL_BITS
            && self.words[arch * recorder::WORDS + nr / 64] & (1 << (nr % 64)) != 0
    }
}

/// Read-only configuration of the recorder object (`.rodata`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecorderConfig {
    /// Offset of `task_struct.thread_info.status` (x86's TS_COMPAT lives there), or
    /// `recorder::NO_OFFSET`.
    pub thread_status: u32,
    /// The TS_COMPAT bit in that word.
    pub compat_mask: u32,
    /// Where x86-64's `syscall` instruction leaves its marks in `pt_regs`, so that most calls
    /// are known native without a helper call: it puts the return address in rcx and the
    /// flags in r11, and the entry code saves the 64-bit user code segment. Byte offsets of
    /// ip, cs (2 bytes read), flags, cx and r11, or `recorder::NO_OFFSET` in `regs_ip` when
    /// the layout is not known (every call then asks for TS_COMPAT).
    pub regs_ip: u32,
    pub regs_cs: u32,
    pub regs_flags: u32,
    pub regs_cx: u32,
    pub regs_r11: u32,
    /// x86-64's `__USER_CS`, the code segment of 64-bit user code.
    pub user_cs: u32,
}

/// `REC_GEN`'s value: user space bumps the low half when the targets change, the kernel the
/// high half (atomically, by `TASKS_GENERATION_ONE`) when a task is created or changes cgroup.
/// Each side changes only its own half, and any change of the whole value retires every
/// CPU's cache entry.
pub mod rec_gen {
    pub const TASKS_GENERATION_ONE: u64 = 1 << 32;
    pub const TARGETS_MASK: u64 = 0xffff_ffff;
}

/// The recorder's per-CPU one-entry cache: the task that last made a syscall on this CPU,
/// known by the address of its saved registers (`sys_enter`'s first argument: a kernel stack
/// is one task's for the task's life), and its slot + 1 (0: not recorded), valid while
/// `generation` matches `REC_GEN`; and the last call recorded from it (number | ABI << 32),
/// so a call repeated in a loop costs no more than the cache check. No helper call on a hit:
/// on this kind of host a helper call alone costs as much as an empty program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecorderCpuCache {
    pub regs: u64,
    pub generation: u64,
    pub last_call: u64,
    pub slot: u32,
    pub _pad: u32,
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
