//! Ending a notebook process the kernel caught where it could not end it itself: a mining
//! call on a flow, dropped by a cgroup skb program, which has no signal helper. The kill
//! ends the flow too (the socket closes).

use nix::{sys::signal::Signal, unistd::Pid};

/// SIGKILL to process `tgid`, which must still be in the notebook cgroup `cgroup_id` (a pid
/// reused since by a process elsewhere is left alone).
pub fn end(proc_root: &std::path::Path, tgid: u32, cgroup_id: u64, cgroup_of: impl Fn(u32) -> Option<u64>) -> bool {
    if tgid == 0 || !proc_root.join(tgid.to_string()).exists() || cgroup_of(tgid) != Some(cgroup_id) {
        return false;
    }
    nix::sys::signal::kill(Pid::from_raw(tgid as i32), Signal::SIGKILL).is_ok()
}
