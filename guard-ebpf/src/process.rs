//! The process lifecycle: `sched_process_exec` (the record, then the enforcement verdict
//! before the new image's first instruction), `sched_process_fork` (marks pass to the child)
//! and `sched_process_exit` (its entries go).

use core::{ffi::c_void, mem::size_of, ptr::addr_of_mut};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use guard_abi::{
    exec_flags,
    kconst::{S_IFMT, S_IFSOCK},
    EventKind, ExecWire, ExitEvent, ForkEvent, ARGS_LEN, CTIME_NSEC_MASK, DNAME_LEN, EXEC_HEAD_LEN,
    MAX_WATCHED_CGROUPS, PATH_LEN,
};

use crate::{
    cgroup::cgroup_lookup,
    read::{copy_kstr, current_cgroup, read, read_ptr},
    ring::{count_lost, header, submit_flags, EVENTS},
    verdict::{self, MARKS, SERVERS},
    CONFIG,
};

/// cgroup ids the agent watches; a process in one of them or below it is reported.
#[map]
static WATCHED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCHED_CGROUPS, 0);

/// Per-CPU space to assemble an exec record (too big for the 512-byte stack), packed as it goes
/// to the ring: each string is read in right after the one before.
#[map]
static WIRE: PerCpuArray<ExecWire> = PerCpuArray::with_max_entries(1, 0);

/// True when the current task should be reported: not the agent, and (unless watching all)
/// inside a watched cgroup or one of its descendants. Checking ancestors in the kernel is what
/// covers a container's first exec: the pod-level cgroup is registered before it exists.
#[inline(always)]
pub(crate) fn wanted(tgid: u32, cgroup: u64) -> bool {
    if tgid == conf!(agent_tgid) {
        return false;
    }
    if conf!(watch_all) != 0 {
        return true;
    }
    cgroup_lookup(&WATCHED, cgroup).is_some()
}

/// Where the next string goes in the tail: the lengths so far, read back from map memory and
/// masked, so the verifier sees one bounded offset (not one state per way the lengths were
/// computed), masked to a power of two that keeps the next copy inside `ExecWire::tail`.
#[inline(always)]
/// # Safety
/// Each pointer in `lens` points into this CPU's WIRE entry.
unsafe fn tail_off(lens: &[*const u16], mask: u32) -> u32 {
    let mut off = 0u32;
    for l in lens {
        off += core::ptr::read_volatile(*l) as u32 & (PATH_LEN as u32 - 1);
    }
    off & mask
}

#[inline(always)]
/// # Safety
/// `w` is this CPU's WIRE entry and `off` is masked below the tail's size by the caller (`tail_off`).
pub(crate) unsafe fn tail_at(w: *mut ExecWire, off: u32) -> *mut u8 {
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
    // SAFETY: the program's own context; the callee reads kernel memory only through the probe-read
    // helpers (see its `# Safety`).
    unsafe { on_exec(&ctx, pid_tgid, cgroup) };
    0
}

#[inline(always)]
/// # Safety
/// `ctx` is sched_process_exec's; the task and bprm pointers are read through probe-read helpers only.
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

/// Bits 0..2 set when fds 0, 1, 2 are sockets.
#[inline(always)]
/// # Safety
/// `task` is a kernel address, read through probe-read helpers only (a bad one reads as zeros).
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
    // SAFETY: `read` goes through bpf_probe_read_kernel, which fails safe on any address.
    let child_pid = unsafe { read::<u32>(child, conf!(offsets.task_pid)) };
    // SAFETY: `read` goes through bpf_probe_read_kernel, which fails safe on any address.
    let child_tgid = unsafe { read::<u32>(child, conf!(offsets.task_tgid)) };
    // A new thread joins its creator's process: lineage only needs processes.
    if child_pid != child_tgid {
        return 0;
    }
    // The child runs its parent's image until it execs: it inherits the parent's marks.
    if verdict::enforcing() {
        // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only
        // make it stale, which is harmless here.
        if let Some(m) = unsafe { MARKS.get(&((pid_tgid >> 32) as u32)) }.copied() {
            if MARKS.insert(&child_tgid, &m, 0).is_err() {
                crate::ring::count_full(guard_abi::map_full::MARKS);
            }
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
        // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only
        // make it stale, which is harmless here.
        if unsafe { MARKS.get(&tgid) }.is_some() {
            let _ = MARKS.remove(&tgid);
        }
        // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only
        // make it stale, which is harmless here.
        if unsafe { SERVERS.get(&tgid) }.is_some() {
            let _ = SERVERS.remove(&tgid);
        }
    }
    let task: *const u8 = ctx.arg::<*const c_void>(0).cast();
    // SAFETY: `read` goes through bpf_probe_read_kernel, which fails safe on any address.
    let exit_code = unsafe { read::<u32>(task, conf!(offsets.task_exit_code)) };
    let ev = ExitEvent { hdr: header(EventKind::Exit, pid_tgid, cgroup), exit_code, _pad: 0 };
    if EVENTS.output::<ExitEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Exit);
    }
    0
}
