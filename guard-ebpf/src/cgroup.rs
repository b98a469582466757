//! "Is the current task in this cgroup or below it": shared by the sensor and the recorder.

use aya_ebpf::{helpers::generated::bpf_get_current_ancestor_cgroup_id, maps::HashMap};
use guard_abi::MAX_CGROUP_DEPTH;

/// The value for the current task's cgroup, `own` (its id, read once by the caller: a helper
/// call costs as much as a small program here), or its nearest registered ancestor.
#[inline(always)]
pub fn cgroup_lookup(map: &HashMap<u64, u32>, own: u64) -> Option<u32> {
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    if let Some(v) = unsafe { map.get(&own) } {
        return Some(*v);
    }
    // Root downwards, stopping at our own level: only as many steps as we are deep (this runs
    // on every connect of the node). The deepest match wins, so a container-level entry
    // overrides its pod's.
    let mut found = None;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: a BPF helper that takes no pointer; it reads the current task only.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == own {
            break;
        }
        // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only
        // make it stale, which is harmless here.
        if let Some(v) = unsafe { map.get(&id) } {
            found = Some(*v);
        }
        level += 1;
    }
    found
}

