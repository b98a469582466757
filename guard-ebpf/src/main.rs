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

use guard_abi::Config;

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

macro_rules! conf {
    ($($f:ident).+) => {{
        // Volatile: the value is patched into .rodata at load time, so the compiler must not
        // fold the zero it sees here.
        #[allow(unused_unsafe)]
        // SAFETY: a static in .rodata, always valid to read.
        let v = unsafe { core::ptr::read_volatile(&CONFIG.$($f).+) };
        v
    }};
}

// After `conf!`: macro_rules are visible only below their definition.
mod commands;
mod dns;
mod egress;
mod fanout;
mod incarnation;
mod packet;
mod process;
mod read;
mod ring;
mod scope;
mod sockets;
mod stratum;
mod verdict;
mod written;
