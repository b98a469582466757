//! An executable file a notebook process changed (`written.rs` in the kernel): drift.

use guard_abi::written::WrittenEvent;

use super::{meta, read_record, DecodeError, Meta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The writer.
    pub meta: Meta,
    /// Kernel dev_t (MAJOR << 20 | MINOR) and inode: the identity an exec reports.
    pub dev: u32,
    pub ino: u64,
    /// The inode's change time after the change (seconds, nanoseconds since the epoch).
    pub ctime: (i64, u32),
    pub mode: u32,
}

pub(super) fn decode(buf: &[u8]) -> Result<Written, DecodeError> {
    let ev: WrittenEvent = read_record(buf, std::mem::size_of::<WrittenEvent>(), guard_abi::EventKind::Written)?;
    Ok(Written { meta: meta(&ev.hdr), dev: ev.dev, ino: ev.ino, ctime: (ev.ctime_sec, ev.ctime_nsec), mode: ev.mode })
}
