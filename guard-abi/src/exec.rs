//! The process lifecycle's records: exec (head and packed strings), fork and exit.

use crate::{EventHeader, ARGS_LEN, COMM_LEN, DNAME_LEN, PATH_LEN};

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
    /// The loaded file's inode change time: part of its identity (see [`FileKey`](crate::FileKey)).
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
