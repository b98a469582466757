//! Makes two 32-bit x86 system calls with `int 0x80` from a 64-bit process: getpid (i386 20,
//! writev on x86_64) and getuid32 (i386 199, fremovexattr on x86_64). A recorder that names
//! them from the x86_64 table gets both wrong. Prints the two results.

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let pid: i64;
        let uid: i64;
        // SAFETY: both calls take no arguments and touch no memory; the kernel zeroes r8-r11
        // on this entry path, so they are declared clobbered.
        unsafe {
            core::arch::asm!("int 0x80", inlateout("rax") 20i64 => pid,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _, options(nostack));
            core::arch::asm!("int 0x80", inlateout("rax") 199i64 => uid,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _, options(nostack));
        }
        println!("{pid} {uid}");
    }
}
