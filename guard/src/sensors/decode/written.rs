//! An executable file a notebook process changed (`written.rs` in the kernel): drift.

use guard_abi::written::WrittenEvent;

use super::{meta, read_record, DecodeError, FileId, Meta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The writer.
    pub meta: Meta,
    /// The file, with its change time after the change.
    pub file: FileId,
    pub mode: u32,
}

pub(super) fn decode(buf: &[u8]) -> Result<Written, DecodeError> {
    let ev: WrittenEvent = read_record(buf, std::mem::size_of::<WrittenEvent>(), guard_abi::EventKind::Written)?;
    let file = FileId::from_kernel(ev.dev, ev.ino, ev.ctime_sec, ev.ctime_nsec);
    Ok(Written { meta: meta(&ev.hdr), file, mode: ev.mode })
}
