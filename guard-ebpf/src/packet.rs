//! Reading packets from cgroup skb programs: bytes and big-endian words at an offset (the
//! helper checks the offset against the packet, so a short packet is None, never a fault),
//! and ASCII lower-casing of DNS labels.

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes};

#[inline(always)]
pub fn u8_at(skb: *mut __sk_buff, off: u32) -> Option<u32> {
    let mut b = 0u8;
    // SAFETY: one byte into a stack variable; the helper checks the packet offset.
    (unsafe { bpf_skb_load_bytes(skb.cast(), off, (&mut b as *mut u8).cast(), 1) } == 0).then_some(u32::from(b))
}

#[inline(always)]
pub fn u16_at(skb: *mut __sk_buff, off: u32) -> Option<u32> {
    let mut b = [0u8; 2];
    // SAFETY: as `u8_at`.
    (unsafe { bpf_skb_load_bytes(skb.cast(), off, b.as_mut_ptr().cast(), 2) } == 0)
        .then_some(u32::from(u16::from_be_bytes(b)))
}

#[inline(always)]
pub fn u32_at(skb: *mut __sk_buff, off: u32) -> Option<u32> {
    let mut b = [0u8; 4];
    // SAFETY: as `u8_at`.
    (unsafe { bpf_skb_load_bytes(skb.cast(), off, b.as_mut_ptr().cast(), 4) } == 0).then_some(u32::from_be_bytes(b))
}

/// ASCII upper to lower case, eight bytes at a time (labels are compared as bytes).
#[inline(always)]
pub fn lower(label: &mut [u8; 64]) {
    let mut i = 0;
    while i < 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&label[i * 8..i * 8 + 8]);
        let x = u64::from_ne_bytes(w);
        let low7 = x & 0x7f7f_7f7f_7f7f_7f7f;
        // Bit 7 of each byte: above 'Z', at least 'A', ASCII.
        let above_z = low7 + 0x2525_2525_2525_2525;
        let from_a = low7 + 0x3f3f_3f3f_3f3f_3f3f;
        let upper = !x & (from_a ^ above_z) & 0x8080_8080_8080_8080;
        label[i * 8..i * 8 + 8].copy_from_slice(&(x | (upper >> 2)).to_ne_bytes());
        i += 1;
    }
}

