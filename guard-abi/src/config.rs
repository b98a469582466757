//! The programs' read-only configuration, written into `.rodata` before load.

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
