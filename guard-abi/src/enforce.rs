//! Enforcement's maps: which cgroups are enforced and with what, trusted identities, per-process
//! marks, scopes and incarnations of notebooks known by other than a cgroup id, kernel commands
//! and trusted scripts.

use crate::EventHeader;

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
    /// The binary of a sanctioned kernel (an admin-installed kernelspec's `argv[0]`): runs when
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
    pub const MAPS: [&str; SLOTS as usize] = [crate::names::MARKS, crate::names::ENFORCED];
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
