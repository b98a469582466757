//! notebook-guard kernel programs.
//!
//! Raw tracepoints on the scheduler's process lifecycle: stable TP_PROTO arguments, no
//! trampolines (fentry/LSM are refused on some hosts), and `sched_process_exec` runs after the
//! new image is loaded and before its first instruction, so what it reports is the binary that
//! will actually run. Kernel struct fields are read at byte offsets the agent resolved from the
//! running kernel's BTF (`CONFIG.offsets`), never at offsets compiled in here.
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_smp_processor_id,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
            bpf_probe_read_kernel_str, bpf_probe_read_user,
        },
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use guard_abi::{
    exec_flags, Config, EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent, ARGS_LEN,
    EVENT_KINDS, EXEC_FIXED_LEN, MAX_CGROUP_DEPTH, MAX_WATCHED_CGROUPS, PATH_LEN,
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
    },
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

/// Per-CPU space to assemble an exec record (too big for the 512-byte stack); only
/// `EXEC_FIXED_LEN + args_len` bytes of it go to the ring.
#[map]
static SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

macro_rules! conf {
    ($($f:ident).+) => {{
        // Volatile: the value is patched into .rodata at load time, so the compiler must not
        // fold the zero it sees here.
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&CONFIG.$($f).+) };
        v
    }};
}

#[inline(always)]
unsafe fn read<T: Copy + Default>(base: *const u8, off: u32) -> T {
    let mut v = T::default();
    if base.is_null() {
        return v;
    }
    bpf_probe_read_kernel(
        addr_of_mut!(v).cast(),
        size_of::<T>() as u32,
        base.add(off as usize).cast(),
    );
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
fn wanted(tgid: u32) -> bool {
    if tgid == conf!(agent_tgid) {
        return false;
    }
    if conf!(watch_all) != 0 {
        return true;
    }
    let own = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { WATCHED.get(&own) }.is_some() {
        return true;
    }
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == own {
            return false;
        }
        if unsafe { WATCHED.get(&id) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

#[inline(always)]
fn count_lost(kind: EventKind) {
    if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
        unsafe { *slot += 1 };
    }
}

/// Submit flags implementing wake-up batching: no wake-up until `wakeup_bytes` are waiting;
/// the agent's poll timer drains anything below that.
#[inline(always)]
fn submit_flags() -> u64 {
    let threshold = conf!(wakeup_bytes);
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn header(kind: EventKind, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Copies a kernel string into `dst`; returns the truncation flag `flag` when the source did
/// not fit (checked by reading the byte the copy had to replace with NUL).
#[inline(always)]
unsafe fn copy_kstr(dst: *mut [u8; PATH_LEN], src: *const u8, flag: u32) -> u32 {
    (*dst)[0] = 0;
    if src.is_null() {
        return 0;
    }
    let n = bpf_probe_read_kernel_str(dst.cast(), PATH_LEN as u32, src.cast());
    if n == PATH_LEN as i64 && read::<u8>(src, PATH_LEN as u32 - 1) != 0 {
        return flag;
    }
    0
}

// TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return 0;
    }
    unsafe { on_exec(&ctx, pid_tgid) };
    0
}

#[inline(always)]
unsafe fn on_exec(ctx: &RawTracePointContext, pid_tgid: u64) {
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let task: *const u8 = ctx.arg::<*const c_void>(0).cast();
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg::<*const c_void>(2).cast();

    (*ev).hdr = header(EventKind::Exec, pid_tgid);
    let parent = read_ptr(task, conf!(offsets.task_real_parent));
    (*ev).ppid = read::<u32>(parent, conf!(offsets.task_tgid));
    let ugid = bpf_get_current_uid_gid();
    (*ev).uid = ugid as u32;
    (*ev).gid = (ugid >> 32) as u32;
    (*ev).old_pid = old_pid as u32;
    (*ev)._pad = 0;
    (*ev).comm = bpf_get_current_comm().unwrap_or_default();

    let mut flags = 0;
    let filename = read_ptr(bprm, conf!(offsets.bprm_filename));
    let interp = read_ptr(bprm, conf!(offsets.bprm_interp));
    flags |= copy_kstr(
        addr_of_mut!((*ev).filename),
        filename,
        exec_flags::FILENAME_TRUNCATED,
    );
    if !interp.is_null() && interp != filename {
        flags |= exec_flags::HAS_INTERP;
        flags |= copy_kstr(
            addr_of_mut!((*ev).interp),
            interp,
            exec_flags::INTERP_TRUNCATED,
        );
    } else {
        (*ev).interp[0] = 0;
    }

    // The file that was actually loaded (for a script: its interpreter's ELF).
    let file = read_ptr(bprm, conf!(offsets.bprm_file));
    let inode = read_ptr(file, conf!(offsets.file_inode));
    let sb = read_ptr(inode, conf!(offsets.inode_sb));
    (*ev).exe_ino = read::<u64>(inode, conf!(offsets.inode_ino));
    (*ev).exe_nlink = read::<u32>(inode, conf!(offsets.inode_nlink));
    (*ev).exe_dev = read::<u32>(sb, conf!(offsets.sb_dev));
    let dentry = read_ptr(file, conf!(offsets.file_dentry));
    let dname = read_ptr(dentry, conf!(offsets.dentry_name));
    (*ev).exe_name[0] = 0;
    if !dname.is_null() {
        bpf_probe_read_kernel_str(
            addr_of_mut!((*ev).exe_name).cast(),
            guard_abi::DNAME_LEN as u32,
            dname.cast(),
        );
    }

    // argv lives in the new image's stack, between mm->arg_start and mm->arg_end.
    (*ev).argc = read::<u32>(bprm, conf!(offsets.bprm_argc));
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
    let len = if len > ARGS_LEN as u32 {
        ARGS_LEN as u32
    } else {
        len
    };
    let mut args_len = 0;
    if len > 0 {
        if bpf_probe_read_user(addr_of_mut!((*ev).args).cast(), len, start as *const c_void) == 0 {
            args_len = len;
        } else {
            flags |= exec_flags::ARGS_UNREADABLE;
        }
    }
    (*ev).args_len = args_len;
    (*ev).flags = flags;

    let size = (EXEC_FIXED_LEN as u32 + args_len) as u64;
    let size = if size > size_of::<ExecEvent>() as u64 {
        size_of::<ExecEvent>() as u64
    } else {
        size
    };
    let bytes = core::slice::from_raw_parts(ev.cast::<u8>(), size as usize);
    if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
        count_lost(EventKind::Exec);
    }
}

// TP_PROTO(struct task_struct *parent, struct task_struct *child)
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !wanted((pid_tgid >> 32) as u32) {
        return 0;
    }
    let child: *const u8 = ctx.arg::<*const c_void>(1).cast();
    let child_pid = unsafe { read::<u32>(child, conf!(offsets.task_pid)) };
    let child_tgid = unsafe { read::<u32>(child, conf!(offsets.task_tgid)) };
    // A new thread joins its creator's process: lineage only needs processes.
    if child_pid != child_tgid {
        return 0;
    }
    let ev = ForkEvent {
        hdr: header(EventKind::Fork, pid_tgid),
        child_pid,
        child_tgid,
    };
    if EVENTS.output::<ForkEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Fork);
    }
    0
}

// TP_PROTO(struct task_struct *p)
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 || !wanted((pid_tgid >> 32) as u32) {
        return 0;
    }
    let task: *const u8 = ctx.arg::<*const c_void>(0).cast();
    let exit_code = unsafe { read::<u32>(task, conf!(offsets.task_exit_code)) };
    let ev = ExitEvent {
        hdr: header(EventKind::Exit, pid_tgid),
        exit_code,
        _pad: 0,
    };
    if EVENTS.output::<ExitEvent>(&ev, submit_flags()).is_err() {
        count_lost(EventKind::Exit);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
