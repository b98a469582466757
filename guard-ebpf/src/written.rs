//! Drift: an executable regular file changed by a notebook process (made with an execute
//! bit, written, chmodded), at `writeback_mark_inode_dirty`. Every change to an inode marks
//! it dirty in the changer's own context; a file that is not executable after it (nearly
//! every one) costs one field read. Each file is reported once per writer: repeats (a chmod
//! loop, a binary written page by page) and accesses (an exec's atime update leaves the
//! change time alone) are dropped here.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use guard_abi::{
    kconst::{S_IFMT, S_IFREG},
    written::{Inode, Seen, WrittenEvent, MAX_WRITTEN_SEEN},
    EventKind, CTIME_NSEC_MASK,
};

use crate::{
    process::wanted,
    read::{current_cgroup, read, read_ptr},
    ring::{header, reserve},
    CONFIG,
};

/// File → the change last reported and its writer.
#[map]
static WRITTEN_SEEN: LruHashMap<Inode, Seen> = LruHashMap::with_max_entries(MAX_WRITTEN_SEEN, 0);

/// The root cgroup's id: kernel threads (writeback's own inode updates) live there.
const ROOT_CGROUP: u64 = 1;

// TP_PROTO(struct inode *inode, int flags). A raw tracepoint, not a BTF one: a BTF tracepoint's
// typed loads would spare an executable's probe reads (a chmod loop in a notebook ran at 0.941
// of its speed instead of 0.904), but loading it takes a parse of the kernel's whole BTF in the
// agent, 12 MiB more at its peak.
#[raw_tracepoint(tracepoint = "writeback_mark_inode_dirty")]
pub fn writeback_mark_inode_dirty(ctx: RawTracePointContext) -> i32 {
    // The tracepoint's first argument: the inode, read through probe-read helpers only.
    let inode: *const u8 = ctx.arg::<*const c_void>(0).cast();
    // SAFETY: as above.
    let mode = unsafe { read::<u16>(inode, conf!(offsets.inode_mode)) };
    if mode & S_IFMT != S_IFREG || mode & 0o111 == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let cgroup = current_cgroup();
    if cgroup <= ROOT_CGROUP || !wanted((pid_tgid >> 32) as u32, cgroup) {
        return 0;
    }
    // SAFETY: as above.
    unsafe { on_written(inode, mode, pid_tgid, cgroup) };
    0
}

#[inline(always)]
/// # Safety
/// `inode` is the tracepoint's; it is read through probe-read helpers only.
unsafe fn on_written(inode: *const u8, mode: u16, pid_tgid: u64, cgroup: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let sb = read_ptr(inode, conf!(offsets.inode_sb));
    let key = Inode {
        ino: read::<u64>(inode, conf!(offsets.inode_ino)),
        dev: read::<u32>(sb, conf!(offsets.sb_dev)),
        _pad: 0,
    };
    let now = Seen {
        ctime_sec: read::<i64>(inode, conf!(offsets.inode_ctime_sec)),
        ctime_nsec: read::<u32>(inode, conf!(offsets.inode_ctime_nsec)) & CTIME_NSEC_MASK,
        tgid,
    };
    if let Some(seen) = WRITTEN_SEEN.get_ptr_mut(&key) {
        // SAFETY: a valid map value; another CPU racing on the same file only decides which
        // of two recent changes is kept.
        let (ctime_sec, ctime_nsec, writer) = unsafe { ((*seen).ctime_sec, (*seen).ctime_nsec, (*seen).tgid) };
        let changed = ctime_sec != now.ctime_sec || ctime_nsec != now.ctime_nsec;
        if !changed || writer == tgid {
            if changed {
                // In place: the same writer again (a chmod loop) costs no insert.
                // SAFETY: as above.
                unsafe {
                    (*seen).ctime_sec = now.ctime_sec;
                    (*seen).ctime_nsec = now.ctime_nsec;
                }
            }
            return;
        }
    }
    // An LRU map makes room by forgetting the oldest file: the insert cannot fail for space.
    let _ = WRITTEN_SEEN.insert(&key, &now, 0);
    let Some((mut entry, flags)) = reserve::<WrittenEvent>(EventKind::Written) else { return };
    let ev = entry.as_mut_ptr();
    (*ev).hdr = header(EventKind::Written, pid_tgid, cgroup);
    (*ev).ino = key.ino;
    (*ev).ctime_sec = now.ctime_sec;
    (*ev).ctime_nsec = now.ctime_nsec;
    (*ev).dev = key.dev;
    (*ev).mode = mode as u32;
    (*ev)._pad = 0;
    entry.submit(flags);
}
