//! Notebook cgroups made again at a path the agent already placed (a restarted TLJH or
//! SystemdSpawner unit, a restarted DockerSpawner container): the `cgroup_mkdir` raw
//! tracepoint gives each new incarnation what the agent decided for that path (`INCARNATIONS`,
//! keyed by the path's hash) in `ENFORCED` and `EGRESS_CG`, before any process can enter the
//! new cgroup. Without it the new id was unknown until the agent handled the incarnation's
//! first exec, and what that exec's children ran meanwhile went unjudged.
//!
//! Costs nothing per exec or connect: it runs only when a cgroup is created.

use core::{ffi::c_void, ptr::addr_of_mut};

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use guard_abi::{
    cgroup_path_hash, CgroupEvent, EventKind, Placement, ENFORCED_ANY, INCARNATION_PATH_MAX, MAX_INCARNATIONS,
};

use crate::{
    egress::EGRESS_CG,
    read::{read, read_ptr},
    ring::{header, reserve},
    verdict::ENFORCED,
    CONFIG,
};

/// Hash of a notebook cgroup's path → what every new cgroup made at that path gets.
#[map]
static INCARNATIONS: HashMap<u64, Placement> = HashMap::with_max_entries(MAX_INCARNATIONS, 0);

/// Per-CPU room for the path (too big for the 512-byte stack).
#[map]
static PATH_BUF: PerCpuArray<[u8; INCARNATION_PATH_MAX]> = PerCpuArray::with_max_entries(1, 0);

// TP_PROTO(struct cgroup *cgrp, const char *path)
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the tracepoint's arguments are a live `struct cgroup *` and a NUL-terminated
    // path; every field is read with bpf_probe_read_kernel at offsets resolved from BTF.
    unsafe { on_mkdir(&ctx) };
    0
}

#[inline(always)]
/// # Safety
/// `ctx` is the cgroup_mkdir raw tracepoint's; the cgroup and path pointers it carries are read through probe-read helpers only.
unsafe fn on_mkdir(ctx: &RawTracePointContext) {
    let cgrp: *const u8 = ctx.arg::<*const c_void>(0).cast();
    let path: *const u8 = ctx.arg::<*const c_void>(1).cast();
    // Only the cgroup v2 hierarchy: on hybrid hosts every v1 hierarchy fires this tracepoint
    // too, and their ids are another id space. The v2 root is the one the current task's
    // `dfl_cgrp` belongs to.
    let task = bpf_get_current_task() as *const u8;
    let css_set = read_ptr(task, conf!(offsets.task_cgroups));
    let dfl = read_ptr(css_set, conf!(offsets.css_set_dfl_cgrp));
    let dfl_root = read_ptr(dfl, conf!(offsets.cgroup_root));
    if dfl_root.is_null() || read_ptr(cgrp, conf!(offsets.cgroup_root)) != dfl_root {
        return;
    }
    let Some(buf) = PATH_BUF.get_ptr_mut(0) else { return };
    let n = bpf_probe_read_kernel_str(addr_of_mut!(*buf).cast(), INCARNATION_PATH_MAX as u32, path.cast());
    let kn = read_ptr(cgrp, conf!(offsets.cgroup_kn));
    let id: u64 = read(kn, conf!(offsets.kernfs_node_id));
    if n <= 0 || id == 0 {
        return;
    }
    // A path that fills the buffer may have been cut: such paths are never remembered.
    if n as usize >= INCARNATION_PATH_MAX {
        return;
    }
    let Some(inc) = INCARNATIONS.get(&cgroup_path_hash(&*buf)).copied() else { return };
    // Only notebook cgroups made again are reported: every other mkdir on the node would make
    // a quiet ring look busy (and keep the agent on its timer instead of woken at once).
    report(id, buf, n as u32 - 1);
    // A failed write is counted: that incarnation then goes unenforced until the agent places
    // it, and the agent says why.
    let mut failed = false;
    if inc.enforce != 0 {
        // The marker first: exec looks at the cgroups only while it is there.
        failed |= ENFORCED.insert(&ENFORCED_ANY, &1, 0).is_err();
        failed |= ENFORCED.insert(&id, &inc.enforce, 0).is_err();
    }
    if inc.egress != 0 {
        failed |= EGRESS_CG.insert(&id, &inc.egress, 0).is_err();
    }
    if failed {
        crate::ring::count_full(guard_abi::map_full::CGROUPS);
    }
}

/// Tells the agent the new cgroup's id and path, ahead of anything its processes do.
#[inline(always)]
/// # Safety
/// `path` points to this CPU's PATH_BUF entry and `len` is at most its size.
unsafe fn report(id: u64, path: *const [u8; INCARNATION_PATH_MAX], len: u32) {
    let Some((mut entry, flags)) = reserve::<CgroupEvent>(EventKind::Cgroup) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, written whole before it is submitted; the path is
    // copied from the per-CPU buffer it was read into.
    (*ev).hdr = header(EventKind::Cgroup, bpf_get_current_pid_tgid(), id);
    (*ev).path_len = len & (INCARNATION_PATH_MAX as u32 - 1);
    (*ev)._pad = 0;
    bpf_probe_read_kernel(core::ptr::addr_of_mut!((*ev).path).cast(), INCARNATION_PATH_MAX as u32, path.cast());
    entry.submit(flags);
}
