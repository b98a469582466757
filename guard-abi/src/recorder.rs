//! The seccomp recorder: a separate object whose `sys_enter` program is attached only while a
//! recording (or a drift watch) runs, because an attached `sys_enter` program taxes every
//! syscall on the node.

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

/// One recording slot: a bit per syscall number and architecture, set once.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallSet {
    pub words: [u64; ARCHES * WORDS],
    /// Calls whose number was beyond `SYSCALL_BITS` (should stay 0; reported if not).
    pub out_of_range: u64,
}

impl Default for SyscallSet {
    fn default() -> Self {
        Self { words: [0; ARCHES * WORDS], out_of_range: 0 }
    }
}

impl SyscallSet {
    pub fn contains(&self, arch: usize, nr: usize) -> bool {
        arch < ARCHES && nr < SYSCALL_BITS && self.words[arch * WORDS + nr / 64] & (1 << (nr % 64)) != 0
    }
}

/// Read-only configuration of the recorder object (`.rodata`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecorderConfig {
    /// Offset of `task_struct.thread_info.status` (x86's TS_COMPAT lives there), or
    /// `NO_OFFSET`.
    pub thread_status: u32,
    /// The TS_COMPAT bit in that word.
    pub compat_mask: u32,
    /// Where x86-64's `syscall` instruction leaves its marks in `pt_regs`, so that most calls
    /// are known native without a helper call: it puts the return address in rcx and the
    /// flags in r11, and the entry code saves the 64-bit user code segment. Byte offsets of
    /// ip, cs (2 bytes read), flags, cx and r11, or `NO_OFFSET` in `regs_ip` when
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
