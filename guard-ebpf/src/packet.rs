//! Reading packets from cgroup skb programs: bytes and big-endian words at an offset (the
//! helper checks the offset against the packet, so a short packet is None, never a fault),
//! and ASCII lower-casing of DNS labels.

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes};

/// Past this offset a read always goes through the helper: it bounds the offset for the
/// verifier (a packet pointer may only move by a bounded amount).
const DIRECT_MAX: u32 = 1024;

/// A packet read directly where its linear part holds the bytes (a load and a bounds check),
/// through the helper beyond it. Every packet a notebook sends or receives comes through the
/// skb programs' header checks, and a helper call per header field was most of their cost.
/// Only for the programs' own frames: the `bpf_loop` callbacks use the helper reads.
#[derive(Clone, Copy)]
pub struct Packet {
    skb: *mut __sk_buff,
    data: usize,
    end: usize,
}

impl Packet {
    /// # Safety
    /// `skb` is the program's context.
    #[inline(always)]
    pub unsafe fn of(skb: *mut __sk_buff) -> Self {
        // SAFETY: context fields the verifier turns into the packet's bounds.
        Packet { skb, data: (*skb).data as usize, end: (*skb).data_end as usize }
    }

    /// `N` bytes at `off`, directly when the linear part holds them.
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: u32) -> Option<[u8; N]> {
        if off < DIRECT_MAX {
            let p = self.data + off as usize;
            // At least 8 bytes are checked: LLVM turns `p + 1 <= end` into `p < end`, a
            // comparison the verifier does not take as a bounds check.
            if p + if N < 8 { 8 } else { N } <= self.end {
                // SAFETY: [p, p + N) is within the linear data, checked against data_end.
                return Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) });
            }
        }
        let mut b = [0u8; N];
        // SAFETY: N bytes into a stack array; the helper checks the packet offset.
        (unsafe { bpf_skb_load_bytes(self.skb.cast(), off, b.as_mut_ptr().cast(), N as u32) } == 0).then_some(b)
    }

    #[inline(always)]
    pub fn u8_at(&self, off: u32) -> Option<u32> {
        self.bytes::<1>(off).map(|b| u32::from(b[0]))
    }

    #[inline(always)]
    pub fn u16_at(&self, off: u32) -> Option<u32> {
        self.bytes::<2>(off).map(|b| u32::from(u16::from_be_bytes(b)))
    }

    /// `N` bytes at `off` into `dst`.
    #[inline(always)]
    pub fn copy<const N: usize>(&self, off: u32, dst: &mut [u8; N]) -> Option<()> {
        *dst = self.bytes::<N>(off)?;
        Some(())
    }
}

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
