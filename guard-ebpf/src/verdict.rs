//! The in-kernel exec verdict: for an exec in an enforced notebook (by cgroup, or by process
//! scope), decide from the loaded file's identity, the process's marks and its parent whether
//! the new image may run; a forbidden one gets SIGKILL before its first instruction. Owns the
//! allow-list (`ALLOWED`) and the per-process marks; what sanctioned kernels may start is
//! looked up in `commands`.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::generated::bpf_send_signal,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use guard_abi::{
    allow_class, enforce_flags, exec_flags, marks, ExecWire, FileKey, ARGS_LEN, CTIME_NSEC_MASK, ENFORCED_ANY,
    MAX_ALLOWED, MAX_MARKED, MAX_SERVERS, MAX_WATCHED_CGROUPS,
};

use crate::{
    cgroup::cgroup_lookup,
    commands,
    process::tail_at,
    read::{read, read_ptr},
    scope, CONFIG,
};

/// Notebook cgroups under enforcement (and below them): `enforce_flags`.
#[map]
pub(crate) static ENFORCED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCHED_CGROUPS, 0);

/// Per-process `marks`, kept by these programs (set at exec, inherited at fork, dropped at
/// exit) so the decision needs no user-space round trip.
#[map]
pub(crate) static MARKS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_MARKED, 0);

/// Notebook server processes (tgid), registered by the agent: a shell whose parent is one of
/// them is a Jupyter terminal.
#[map]
pub(crate) static SERVERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SERVERS, 0);

/// File identities allowed to run in enforced cgroups: `allow_class`.
#[map]
static ALLOWED: HashMap<FileKey, u32> = HashMap::with_max_entries(MAX_ALLOWED, 0);

/// One per-CPU word for `forget_precision`.
#[map]
static SCAN_TMP: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// True while some cgroup is enforced (`ENFORCED_ANY`, one hot key). `MARKS` and `SERVERS`
/// are kept only then: in monitor mode, fork and exit touch no per-process entry (a lookup of
/// a random key costs a cache and TLB miss), and the agent empties both maps when the last
/// cgroup leaves enforcement, so no stale entry outlives it.
#[inline(always)]
pub(crate) fn enforcing() -> bool {
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    unsafe { ENFORCED.get(&ENFORCED_ANY) }.is_some()
}

/// Enforcement for an exec in an enforced cgroup: decide, kill if forbidden, and record the
/// outcome in the event's flags. Everything is re-read from the event in map memory, so the
/// verifier walks this once rather than once per path through the field copying above.
#[inline(always)]
/// # Safety
/// `w` is this CPU's WIRE entry holding the exec's head, `args` points into its tail; `task` is read through probe-read helpers only.
pub(crate) unsafe fn enforce(w: *mut ExecWire, args: *const u8, task: *const u8, pid_tgid: u64, cgroup: u64) {
    let ev = addr_of_mut!((*w).head);
    // Nothing enforced anywhere (monitor mode): no walk up the cgroup tree on every exec.
    if !enforcing() {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // A notebook known by its cgroup, else by its process's scope (LocalProcessSpawner).
    let enf = match cgroup_lookup(&ENFORCED, cgroup) {
        Some(enf) => enf,
        None => match scope::of_task(tgid) {
            Some(p) => p.enforce,
            None => return,
        },
    };
    if enf & enforce_flags::ON == 0 {
        return;
    }
    let mut flags = core::ptr::read_volatile(&(*ev).flags) | exec_flags::ENFORCED;
    let key = FileKey {
        dev: core::ptr::read_volatile(&(*ev).exe_dev),
        ctime_nsec: core::ptr::read_volatile(&(*ev).exe_ctime_nsec),
        ino: core::ptr::read_volatile(&(*ev).exe_ino),
        ctime_sec: core::ptr::read_volatile(&(*ev).exe_ctime_sec),
    };
    // A `#!` script trusted by its path (in this task's mount namespace): its class.
    let script = if flags & exec_flags::HAS_INTERP != 0 {
        commands::script_class(tail_at(w, 0), core::ptr::read_volatile(&(*ev).filename_len), task)
    } else {
        0
    };
    let ppid = core::ptr::read_volatile(&(*ev).ppid);
    let args_len = core::ptr::read_volatile(&(*ev).args_len);
    let parent = read_ptr(task, conf!(offsets.task_real_parent));
    let (verdict, mark) = decide(enf, &key, script, tgid, ppid, parent, args, args_len);
    if mark & marks::UNDER_PYTHON != 0 {
        flags |= exec_flags::UNDER_PYTHON;
    }
    if !verdict {
        // Before the new image's first instruction: it never runs.
        bpf_send_signal(9);
        flags |= exec_flags::KILLED;
    }
    core::ptr::write_volatile(&mut (*ev).flags, flags);
}

#[inline(always)]
/// # Safety
/// `file` is a kernel address, read through probe-read helpers only.
unsafe fn file_key(file: *const u8) -> FileKey {
    let inode = read_ptr(file, conf!(offsets.file_inode));
    let sb = read_ptr(inode, conf!(offsets.inode_sb));
    FileKey {
        dev: read::<u32>(sb, conf!(offsets.sb_dev)),
        ctime_nsec: read::<u32>(inode, conf!(offsets.inode_ctime_nsec)) & CTIME_NSEC_MASK,
        ino: read::<u64>(inode, conf!(offsets.inode_ino)),
        ctime_sec: read::<i64>(inode, conf!(offsets.inode_ctime_sec)),
    }
}

#[inline(always)]
fn class_of(key: &FileKey) -> u32 {
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    unsafe { ALLOWED.get(key) }.copied().unwrap_or(0)
}

/// Parks a loop's result in map memory and reads it back: the verifier then sees one
/// unknown (bounded) value instead of one state per loop exit, which keeps two loops in a row
/// from multiplying their states.
#[inline(always)]
fn forget_precision(v: u32) -> u32 {
    match SCAN_TMP.get_ptr_mut(0) {
        // SAFETY: this CPU's SCAN_TMP slot, valid and written by nothing else while the program
        // runs.
        Some(p) => unsafe {
            core::ptr::write_volatile(p, v);
            core::ptr::read_volatile(p)
        },
        None => v,
    }
}

/// True for the shape of IPython's `%pip`: `sh -c "<python> -m pip …"` — argv[1] is `-c` and
/// the command's first word is followed by `-m pip `. Such a shell is then confined: it may
/// exec only Python (`marks::PIP_SHELL`); its builtins are the residual risk. Raw reads with
/// explicit bounds, since an indexing panic path would not load.
#[inline(always)]
/// # Safety
/// `args` points to `args_len` readable bytes of this CPU's WIRE tail.
unsafe fn is_pip_shell(args: *const u8, args_len: u32) -> bool {
    // argv[0] is the shell (`/bin/sh`); argv[2] starts with the interpreter's path.
    const SHELL_SCAN: usize = 48;
    const CMD_SCAN: usize = 160;
    let len = if (args_len as usize) < ARGS_LEN { args_len as usize } else { ARGS_LEN };
    // A constant bound the verifier can see, with slack for the `+ k` reads below.
    let at = |i: usize| -> u8 {
        if i >= len || i >= ARGS_LEN - 16 {
            0
        } else {
            *args.add(i)
        }
    };
    // End of argv[0].
    let mut i = 0usize;
    while i < SHELL_SCAN {
        if at(i) == 0 {
            break;
        }
        i += 1;
    }
    if at(i + 1) != b'-' || at(i + 2) != b'c' || at(i + 3) != 0 {
        return false;
    }
    // Masked small: the compiler may add the loop index to a pointer built from `start`.
    let start = forget_precision((i + 4) as u32) as usize & 511;
    // First space of argv[2], then "-m pip ".
    let mut j = 0usize;
    while j < CMD_SCAN {
        let b = at(start + j);
        if b == 0 {
            return false;
        }
        if b == b' ' {
            break;
        }
        j += 1;
    }
    // One state for every way the loop ended (older verifiers otherwise follow each exit
    // through the rest of the decision, past their 1M-instruction limit).
    let p = forget_precision((start + j) as u32) as usize & 1023;
    at(p + 1) == b'-'
        && at(p + 2) == b'm'
        && at(p + 3) == b' '
        && at(p + 4) == b'p'
        && at(p + 5) == b'i'
        && at(p + 6) == b'p'
        && (at(p + 7) == b' ' || at(p + 7) == 0)
}

/// The enforcement decision for an exec in an enforced cgroup: (allowed, marks of the new
/// image). Only processes that descend from the notebook's Python are judged; the container's
/// own start-up (tini, start.sh) runs before any Python and is left alone.
#[inline(always)]
/// # Safety
/// As `enforce`: WIRE pointers of this CPU, kernel addresses read through probe-read helpers only.
unsafe fn decide(
    enf: u32,
    key: &FileKey,
    script: u32,
    tgid: u32,
    ppid: u32,
    parent: *const u8,
    args: *const u8,
    args_len: u32,
) -> (bool, u32) {
    let mut mark = MARKS.get(&tgid).copied().unwrap_or(0);
    // Forked from a helper script: the parent's image is a shell, so the mark says it.
    let from_helper_script = mark & marks::HELPER_SCRIPT != 0;
    if from_helper_script {
        mark &= !marks::HELPER_SCRIPT;
        set_mark(tgid, mark);
    }
    let class = class_of(key);
    if class == allow_class::PYTHON {
        mark = (mark | marks::UNDER_PYTHON) & !marks::PIP_SHELL;
        set_mark(tgid, mark);
        return (true, mark);
    }
    // A kernel's start: the launcher's next exec (the kernel itself, the launcher's own
    // helpers) runs; from then on what it starts is judged like Python's.
    if mark & marks::LAUNCHING != 0 {
        mark = (mark & !marks::LAUNCHING) | marks::UNDER_PYTHON;
        set_mark(tgid, mark);
        return (true, mark);
    }
    if mark & marks::UNDER_PYTHON == 0 || mark & marks::EXEMPT != 0 {
        return (true, mark);
    }
    if mark & marks::PIP_SHELL != 0 {
        return (false, mark);
    }
    let parent_mm = read_ptr(parent, conf!(offsets.task_mm));
    let parent_exe = read_ptr(parent_mm, conf!(offsets.mm_exe_file));
    let parent_class = if from_helper_script {
        allow_class::HELPER
    } else if parent_exe.is_null() {
        0
    } else {
        class_of(&file_key(parent_exe))
    };
    let parent_is_python = parent_class == allow_class::PYTHON;
    // A trusted script is what its path says it is; its interpreter's class does not count.
    let role = if script != 0 { script } else { class };
    let chain_parent = parent_class == allow_class::HELPER || parent_class == allow_class::CHAINED_HELPER;
    if (role == allow_class::HELPER && parent_is_python)
        || (role == allow_class::CHAINED_HELPER && (parent_is_python || chain_parent))
    {
        if script != 0 {
            mark |= marks::HELPER_SCRIPT;
            set_mark(tgid, mark);
        }
        return (true, mark);
    }
    // The server starting a sanctioned kernel: its launcher script, or its binary.
    if parent_is_python && role == allow_class::LAUNCHER {
        if script != 0 {
            mark |= marks::LAUNCHING;
            set_mark(tgid, mark);
        }
        return (true, mark);
    }
    if class == allow_class::SHELL {
        if enf & enforce_flags::TERMINALS != 0 && SERVERS.get(&ppid).is_some() {
            mark |= marks::EXEMPT;
            set_mark(tgid, mark);
            return (true, mark);
        }
        if enf & enforce_flags::PIP_MAGIC != 0 && parent_is_python && is_pip_shell(args, args_len) {
            mark |= marks::PIP_SHELL;
            set_mark(tgid, mark);
            return (true, mark);
        }
        // A command the policy names for a sanctioned kernel, byte for byte: it and what it
        // starts run.
        if commands::is_kernel_command(args, args_len) {
            mark |= marks::EXEMPT;
            set_mark(tgid, mark);
            return (true, mark);
        }
    }
    (false, mark)
}

/// Writes `tgid`'s mark; a full MARKS is counted for the agent to report.
#[inline(always)]
fn set_mark(tgid: u32, mark: u32) {
    if MARKS.insert(&tgid, &mark, 0).is_err() {
        crate::ring::count_full(guard_abi::map_full::MARKS);
    }
}
