//! Notebooks known by process rather than by cgroup: a LocalProcessSpawner server runs in the
//! hub's own cgroup, next to the hub, the proxy and other users' servers, so its cgroup cannot
//! say what is a notebook. The agent gives the server a scope in `MARKS`; its descendants
//! inherit it at fork (`sched_process_fork`), and `SCOPES` says what applies to the scope.
//! Exec enforcement and the egress hooks fall back to it where no cgroup entry matches.

use aya_ebpf::{macros::map, maps::HashMap};
use guard_abi::{marks::SCOPE_SHIFT, Placement, MAX_SCOPES, SCOPE_ANY};

use crate::verdict::MARKS;

/// Scope id → what applies to every process carrying it; `SCOPE_ANY` while any exists.
#[map]
static SCOPES: HashMap<u32, Placement> = HashMap::with_max_entries(MAX_SCOPES, 0);

/// What applies to process `tgid` through its scope, if it has one.
#[inline(always)]
pub fn of_task(tgid: u32) -> Option<Placement> {
    of_task_at(tgid).map(|(_, p)| p)
}

/// [`of_task`], with the scope's id.
#[inline(always)]
pub fn of_task_at(tgid: u32) -> Option<(u32, Placement)> {
    // SAFETY (all three lookups): map values are plain data, copied out at once; the kernel
    // keeps an element alive for the program's run.
    if unsafe { SCOPES.get(&SCOPE_ANY) }.is_none() {
        return None;
    }
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    let scope = unsafe { MARKS.get(&tgid) }.copied()? >> SCOPE_SHIFT;
    if scope == SCOPE_ANY {
        return None;
    }
    // SAFETY: the value is copied out at once; another CPU deleting the key meanwhile can only make
    // it stale, which is harmless here.
    unsafe { SCOPES.get(&scope) }.copied().map(|p| (scope, p))
}
