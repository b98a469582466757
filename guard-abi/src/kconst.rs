//! Linux constants both sides read (socket families and types, syscall numbers, mode bits),
//! named once: the kernel programs test them, the agent names them in alerts.

/// `sa_family` / `socket(2)` domains.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_PACKET: u32 = 17;

/// `socket(2)` types.
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;

pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;

pub const CAP_NET_RAW: i32 = 13;

/// x86_64 syscall numbers a CAP_NET_RAW check for a new socket can come from. The i386 numbers
/// never collide with a native call that checks CAP_NET_RAW (native 102 is getuid, 359 unused).
pub const NR_SOCKET: u64 = 41;
pub const NR_IO_URING_ENTER: u64 = 426;
pub const NR_I386_SOCKET: u64 = 359;
pub const NR_I386_SOCKETCALL: u64 = 102;
/// Set in the syscall number of an x32 call.
pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// `task_struct.flags` bit of io_uring's kernel threads (5.12+).
pub const PF_IO_WORKER: u32 = 0x10;

/// `inode.i_mode` file-type bits.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFREG: u16 = 0o100000;
