//! notebook-guard kernel programs.
//!
//! Raw tracepoints on the scheduler's process lifecycle: stable TP_PROTO arguments, no
//! trampolines (fentry/LSM are refused on some hosts), and `sched_process_exec` runs after the
//! new image is loaded and before its first instruction, so what it reports is the binary that
//! will actually run. Kernel struct fields are read at byte offsets the agent resolved from the
//! running kernel's BTF (`CONFIG.offsets`), never at offsets compiled in here.
#![no_std]
#![no_main]

mod cgroup;
mod rt;

use cgroup::cgroup_lookup;

use core::{ffi::c_void, mem::size_of, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_smp_processor_id,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use guard_abi::{
    exec_flags, Config, EventHeader, EventKind, ExecWire, ExitEvent, ForkEvent, ARGS_LEN, CTIME_NSEC_MASK, DNAME_LEN,
    EVENT_KINDS, EXEC_HEAD_LEN, MAX_MARKED, MAX_SERVERS, MAX_WATCHED_CGROUPS, PATH_LEN, RECORD_FORMAT,
};

/// Filled in by the agent before load (`.rodata`).
#[no_mangle]
static CONFIG: Config = Config {
    agent_tgid: 0,
    watch_all: 1,
    wakeup_bytes: 0,
    offsets: guard_abi::KernelOffsets {
        task_pid: 0,
        task_tgid: 0,
        task_real_parent: 0,
        task_mm: 0,
        task_exit_code: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        bprm_file: 0,
        bprm_filename: 0,
        bprm_interp: 0,
        bprm_argc: 0,
        file_inode: 0,
        file_dentry: 0,
        dentry_name: 0,
        inode_ino: 0,
        inode_nlink: 0,
        inode_sb: 0,
        sb_dev: 0,
        inode_mode: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        mm_exe_file: 0,
        task_flags: 0,
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        cgroup_root: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        inode_ctime_sec: 0,
        inode_ctime_nsec: 0,
        task_nsproxy: 0,
        nsproxy_mnt_ns: 0,
        mnt_ns_inum: 0,
    },
    regs: guard_abi::SyscallRegs { nr: 0, args: [0; 3], compat_args: [0; 3], _pad: 0 },
};

/// The agent resizes this before load (`--ring-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records that did not fit in `EVENTS`, per event kind: loss is counted, never silent.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

/// cgroup ids the agent watches; a process in one of them or below it is reported.
#[map]
static WATCHED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCHED_CGROUPS, 0);

/// Notebook cgroups under enforcement (and below them): `enforce_flags`.
#[map]
static ENFORCED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCHED_CGROUPS, 0);

/// Per-process `marks`, kept by these programs (set at exec, inherited at fork, dropped at
/// exit) so the decision needs no user-space round trip.
#[map]
static MARKS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_MARKED, 0);

/// Notebook server processes (tgid), registered by the agent: a shell whose parent is one of
/// them is a Jupyter terminal.
#[map]
static SERVERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SERVERS, 0);

/// Per-CPU space to assemble an exec record (too big for the 512-byte stack), packed as it goes
/// to the ring: each string is read in right after the one before.
#[map]
static WIRE: PerCpuArray<ExecWire> = PerCpuArray::with_max_entries(1, 0);

macro_rules! conf {
    ($($f:ident).+) => {{
        // Volatile: the value is patched into .rodata at load time, so the compiler must not
        // fold the zero it sees here.
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&CONFIG.$($f).+) };
        v
    }};
}

mod egress;
mod incarnation;
mod scope;
mod verdict;

#[inline(always)]
unsafe fn read<T: Copy + Default>(base: *const u8, off: u32) -> T {
    let mut v = T::default();
    if base.is_null() {
        return v;
    }
    bpf_probe_read_kernel(addr_of_mut!(v).cast(), size_of::<T>() as u32, base.add(off as usize).cast());
    v
}

#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> *const u8 {
    read::<u64>(base, off) as *const u8
}

/// True when the current task should be reported: not the agent, and (unless watching all)
/// inside a watched cgroup or one of its descendants. Checking ancestors in the kernel is what
/// covers a container's first exec: the pod-level cgroup is registered before it exists.
#[inline(always)]
fn wanted(tgid: u32, cgroup: u64) -> bool {
    if tgid == conf!(agent_tgid) {
        return false;
    }
    if conf!(watch_all) != 0 {
        return true;
    }
    cgroup_lookup(&WATCHED, cgroup).is_some()
}

/// The current task's cgroup v2 id.
#[inline(always)]
fn current_cgroup() -> u64 {
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn count_lost(kind: EventKind) {
    if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
        unsafe { *slot += 1 };
    }
}

/// Bytes waiting in `EVENTS` at the last submit (the agent's ring-fill gauge).
#[map]
static RING_FILL: Array<u64> = Array::with_max_entries(1, 0);

/// Non-zero while the agent drains on its own timer (set and cleared by its ring reader).
/// Not pinned: each load has its own, so a crashed agent's flag never silences the next one.
#[map]
static AGENT_POLLING: Array<u32> = Array::with_max_entries(1, 0);

/// Submit flags implementing wake-up batching: the first record into an empty ring wakes an
/// idle agent (the first alert goes out at once, and an idle agent needs no timer). An agent
/// that is draining on its own timer is not woken (its reader would empty the ring and the
/// next record would wake it again: one needless wake-up per drain), except once
/// `wakeup_bytes` are waiting.
#[inline(always)]
fn submit_flags() -> u64 {
    let threshold = conf!(wakeup_bytes);
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(slot) = RING_FILL.get_ptr_mut(0) {
        unsafe { *slot = avail };
    }
    if threshold == 0 {
        return 0;
    }
    if avail >= threshold {
        return BPF_RB_FORCE_WAKEUP as u64;
    }
    let polling = AGENT_POLLING.get(0).is_some_and(|p| unsafe { core::ptr::read_volatile(p) } != 0);
    if avail == 0 && !polling {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn header(kind: EventKind, pid_tgid: u64, cgroup: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32 | RECORD_FORMAT << 16,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        cgroup_id: cgroup,
    }
}

/// Copies a kernel string of at most `max` bytes (NUL included) to `dst`; returns its length
/// without the NUL, and the truncation flag `flag` when the source did not fit (checked by
/// reading the byte the copy had to replace with NUL).
#[inline(always)]
unsafe fn copy_kstr(dst: *mut u8, src: *const u8, max: u32, flag: u32) -> (u16, u32) {
    if src.is_null() {
        return (0, 0);
    }
    let n = bpf_probe_read_kernel_str(dst.cast(), max, src.cast());
    let len = if n > 0 { (n - 1) as u16 } else { 0 };
    if n == max as i64 && read::<u8>(src, max - 1) != 0 {
        return (len, flag);
    }
    (len, 0)
}

/// Where the next string goes in the tail: the lengths so far, read back from map memory and
/// masked, so the verifier sees one bounded offset (not one state per way the lengths were
/// computed), masked to a power of two that keeps the next copy inside `ExecWire::tail`.
#[inline(always)]
unsafe fn tail_off(lens: &[*const u16], mask: u32) -> u32 {
    let mut off = 0u32;
    for l in lens {
        off += core::ptr::read_volatile(*l) as u32 & (PATH_LEN as u32 - 1);
    }
    off & mask
}

#[inline(always)]
unsafe fn tail_at(w: *mut ExecWire, off: u32) -> *mut u8 {
    addr_of_mut!((*w).tail).cast::<u8>().add(off as usize)
}

// TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup = current_cgroup();
    if !wanted((pid_tgid >> 32) as u32, cgroup) {
        return 0;
    }
    unsafe { on_exec(&ctx, pid_tgid, cgroup) };
    0
}

#[inline(always)]
unsafe fn on_exec(ctx: &RawTracePointContext, pid_tgid: u64, cgroup: u64) {
    let Some(w) = WIRE.get_ptr_mut(0) else {
        return;
    };
    let task: *const u8 = ctx.arg::<*const c_void>(0).cast();
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg::<*const c_void>(2).cast();

    let h = addr_of_mut!((*w).head);
    (*h).hdr = header(EventKind::Exec, pid_tgid, cgroup);
    let parent = read_ptr(task, conf!(offsets.task_real_parent));
    (*h).ppid = read::<u32>(parent, conf!(offsets.task_tgid));
    let ugid = bpf_get_current_uid_gid();
    (*h).uid = ugid as u32;
    (*h).gid = (ugid >> 32) as u32;
    (*h).old_pid = old_pid as u32;
    (*h).comm = bpf_get_current_comm().unwrap_or_default();

    // The strings, back to back in the tail: filename, interp, exe name, argv.
    let fl_p = addr_of_mut!((*h).filename_len);
    let il_p = addr_of_mut!((*h).interp_len);
    let el_p = addr_of_mut!((*h).exe_name_len);
    let mut flags = 0;
    let filename = read_ptr(bprm, conf!(offsets.bprm_filename));
    let interp = read_ptr(bprm, conf!(offsets.bprm_interp));
    let (len, f) = copy_kstr(tail_at(w, 0), filename, PATH_LEN as u32, exec_flags::FILENAME_TRUNCATED);
    *fl_p = len;
    flags |= f;
    *il_p = 0;
    if !interp.is_null() && interp != filename {
        flags |= exec_flags::HAS_INTERP;
        let dst = tail_at(w, tail_off(&[fl_p], 511));
        let (len, f) = copy_kstr(dst, interp, PATH_LEN as u32, exec_flags::INTERP_TRUNCATED);
        *il_p = len;
        flags |= f;
    }

    // The file that was actually loaded (for a script: its interpreter's ELF).
    let file = read_ptr(bprm, conf!(offsets.bprm_file));
    let inode = read_ptr(file, conf!(offsets.file_inode));
    let sb = read_ptr(inode, conf!(offsets.inode_sb));
    (*h).exe_ino = read::<u64>(inode, conf!(offsets.inode_ino));
    (*h).exe_nlink = read::<u32>(inode, conf!(offsets.inode_nlink));
    (*h).exe_dev = read::<u32>(sb, conf!(offsets.sb_dev));
    (*h).exe_ctime_sec = read::<i64>(inode, conf!(offsets.inode_ctime_sec));
    (*h).exe_ctime_nsec = read::<u32>(inode, conf!(offsets.inode_ctime_nsec)) & CTIME_NSEC_MASK;

    let dentry = read_ptr(file, conf!(offsets.file_dentry));
    let dname = read_ptr(dentry, conf!(offsets.dentry_name));
    *el_p = 0;
    if !dname.is_null() {
        let (len, _) = copy_kstr(tail_at(w, tail_off(&[fl_p, il_p], 1023)), dname, DNAME_LEN as u32, 0);
        *el_p = len;
    }

    // argv lives in the new image's stack, between mm->arg_start and mm->arg_end.
    (*h).argc = read::<u32>(bprm, conf!(offsets.bprm_argc));
    let mm = read_ptr(task, conf!(offsets.task_mm));
    let start = read::<u64>(mm, conf!(offsets.mm_arg_start));
    let end = read::<u64>(mm, conf!(offsets.mm_arg_end));
    let mut len = end.saturating_sub(start);
    if len > ARGS_LEN as u64 {
        len = ARGS_LEN as u64;
        flags |= exec_flags::ARGS_TRUNCATED;
    }
    // Re-bound for the verifier, which cannot always see through the comparison above.
    let len = (len as u32) & (2 * ARGS_LEN as u32 - 1);
    let len = if len > ARGS_LEN as u32 { ARGS_LEN as u32 } else { len };
    let args = tail_at(w, tail_off(&[fl_p, il_p, el_p], 2047));
    let mut args_len = 0;
    if len > 0 {
        if bpf_probe_read_user(args.cast(), len, start as *const c_void) == 0 {
            args_len = len;
        } else {
            flags |= exec_flags::ARGS_UNREADABLE;
        }
    }
    (*h).args_len = args_len;
    (*h).flags = flags;
    (*h).stdio_sockets = stdio_sockets(task);
    verdict::enforce(w, args, task, pid_tgid, cgroup);

    // Read back from map memory: the verifier then sees one bounded size instead of one state
    // per combination of flags computed above.
    let args_len = core::ptr::read_volatile(&(*h).args_len) & (2 * ARGS_LEN as u32 - 1);
    let args_len = if args_len > ARGS_LEN as u32 { ARGS_LEN as u32 } else { args_len };
    let size = EXEC_HEAD_LEN + (tail_off(&[fl_p, il_p, el_p], 2047) + args_len) as usize;
    let size = if size > size_of::<ExecWire>() { size_of::<ExecWire>() } else { size };
    let bytes = core::slice::from_raw_parts(w.cast::<u8>(), size);
    if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
        count_lost(EventKind::Exec);
    }
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// Bits 0..2 set when fds 0, 1, 2 are sockets.
#[inline(always)]
unsafe fn stdio_sockets(task: *const u8) -> u32 {
    let files = read_ptr(task, conf!(offsets.task_files));
    let fdt = read_ptr(files, conf!(offsets.files_fdt));
    let fds = read_ptr(fdt, conf!(offsets.fdtable_fd));
    let mut bits = 0;
    let mut i = 0u32;
    while i < 3 {
        let file = read_ptr(fds, i * 8);
        let inode = read_ptr(file, conf!(offsets.file_inode));
        let mode = read::<u16>(inode, conf!(offsets.inode_mode));
        if !inode.is_null() && mode & S_IFMT == S_IFSOCK {
            bits |= 1 << i;
        }
        i += 1;
    }
    bits
}

// TP_PROTO(struct task_struct *parent, struct task_struct *child)
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup = current_cgroup();
    if !wanted((pid_tgid >> 32) as u32, cgroup) {
        return 0;
    }
    let child: *const u8 = ctx.arg::<*const c_void>(1).cast();
    let child_pid = unsafe { read::<u32>(child, conf!(offsets.task_pid)) };
    let child_tgid = unsafe { read::<u32>(child, conf!(offsets.task_tgid)) };
    // A new thread joins its creator's process: lineage only needs processes.
    if child_pid != child_tgid {
        return 0;
    }
    // The child runs its parent's image until it execs: it inherits the parent's marks.
    if verdict::enforcing() {
        if let Some(m) = unsafe { MARKS.get(&((pid_tgid >> 32) as u32)) }.copied() {
            let _ = MARKS.insert(&child_tgid, &m, 0);
        }
    }
    let ev = ForkEvent { hdr: header(EventKind::Fork, pid_tgid, cgroup), child_pid, child_tgid };
    if EVENTS.output::<ForkEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Fork);
    }
    0
}

// TP_PROTO(struct task_struct *p)
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 {
        return 0;
    }
    let cgroup = current_cgroup();
    if !wanted((pid_tgid >> 32) as u32, cgroup) {
        return 0;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // Looked up first: a delete locks its bucket even for a key that is not there, which is
    // most processes.
    if verdict::enforcing() {
        if unsafe { MARKS.get(&tgid) }.is_some() {
            let _ = MARKS.remove(&tgid);
        }
        if unsafe { SERVERS.get(&tgid) }.is_some() {
            let _ = SERVERS.remove(&tgid);
        }
    }
    let task: *const u8 = ctx.arg::<*const c_void>(0).cast();
    let exit_code = unsafe { read::<u32>(task, conf!(offsets.task_exit_code)) };
    let ev = ExitEvent { hdr: header(EventKind::Exit, pid_tgid, cgroup), exit_code, _pad: 0 };
    if EVENTS.output::<ExitEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Exit);
    }
    0
}
