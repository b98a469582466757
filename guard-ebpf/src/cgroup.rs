//! "Is the current task in this cgroup or below it": shared by the sensor and the recorder.

use aya_ebpf::{helpers::generated::bpf_get_current_ancestor_cgroup_id, maps::HashMap};
use guard_abi::MAX_CGROUP_DEPTH;

/// The value for the current task's cgroup, `own` (its id, read once by the caller: a helper
/// call costs as much as a small program here), or its nearest registered ancestor.
#[inline(always)]
pub fn cgroup_lookup(map: &HashMap<u64, u32>, own: u64) -> Option<u32> {
    cgroup_lookup_at(map, own).map(|(_, v)| v)
}

/// [`cgroup_lookup`], with the id of the cgroup whose entry it found (the notebook whose DNS
/// answers count). Values are read out of the map at once: an Option holding the lookup's
/// pointer may be folded by the compiler into arithmetic the verifier refuses.
#[inline(always)]
pub fn cgroup_lookup_at(map: &HashMap<u64, u32>, own: u64) -> Option<(u64, u32)> {
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    if let Some(v) = unsafe { map.get(&own) } {
        // SAFETY: a valid map value pointer, read once.
        return Some((own, unsafe { core::ptr::read_volatile(v) }));
    }
    let (mut at, mut value) = (0u64, 0u32);
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == own {
            break;
        }
        // SAFETY: as above.
        if let Some(v) = unsafe { map.get(&id) } {
            at = id;
            // SAFETY: a valid map value pointer, read once.
            value = unsafe { core::ptr::read_volatile(v) };
        }
        level += 1;
    }
    (at != 0).then_some((at, value))
}
