//! Reading kernel memory at the offsets the agent resolved from BTF.

use core::{mem::size_of, ptr::addr_of_mut};

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id,
    generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
};

#[inline(always)]
/// # Safety
/// `base` may be any kernel address: bpf_probe_read_kernel fails safe and leaves the default value.
pub(crate) unsafe fn read<T: Copy + Default>(base: *const u8, off: u32) -> T {
    let mut v = T::default();
    if base.is_null() {
        return v;
    }
    bpf_probe_read_kernel(addr_of_mut!(v).cast(), size_of::<T>() as u32, base.add(off as usize).cast());
    v
}

#[inline(always)]
/// # Safety
/// As `read`.
pub(crate) unsafe fn read_ptr(base: *const u8, off: u32) -> *const u8 {
    read::<u64>(base, off) as *const u8
}

/// The current task's cgroup v2 id.
#[inline(always)]
pub(crate) fn current_cgroup() -> u64 {
    // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Copies a kernel string of at most `max` bytes (NUL included) to `dst`; returns its length
/// without the NUL, and the truncation flag `flag` when the source did not fit (checked by
/// reading the byte the copy had to replace with NUL).
#[inline(always)]
/// # Safety
/// `dst` has room for `max` bytes (a WIRE or per-CPU buffer); `src` may be any kernel address.
pub(crate) unsafe fn copy_kstr(dst: *mut u8, src: *const u8, max: u32, flag: u32) -> (u16, u32) {
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
