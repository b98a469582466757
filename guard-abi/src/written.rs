//! Executables written in a session (drift): a notebook process left a regular file with an
//! execute bit changed (made, written, chmodded). Seen at `writeback_mark_inode_dirty`, where
//! every change to an inode passes in the changer's own context, so only such changes cost
//! anything, not each file system event on the node (a fanotify file-system mark's price).

/// Files remembered in the kernel, to report each one once per writer.
pub const MAX_WRITTEN_SEEN: u32 = 16384;

pub mod names {
    pub const WRITTEN_SEEN: &str = "WRITTEN_SEEN";
    pub const PROG_INODE_DIRTY: &str = "writeback_mark_inode_dirty";
}

/// `WRITTEN_SEEN` key: a file as the kernel knows it, whatever has changed in it (the
/// `ALLOWED` map's [`crate::FileKey`] has its change time too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Inode {
    pub ino: u64,
    /// Kernel dev_t (MAJOR << 20 | MINOR).
    pub dev: u32,
    pub _pad: u32,
}

/// `WRITTEN_SEEN` value: the change last reported (its change time) and its writer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub tgid: u32,
}

/// An executable regular file changed by a notebook process (the header's).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WrittenEvent {
    pub hdr: crate::EventHeader,
    pub ino: u64,
    /// The inode's change time after the change: a change is recent, an access (an atime
    /// update marks the inode dirty too) is not.
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    /// Kernel dev_t (MAJOR << 20 | MINOR).
    pub dev: u32,
    pub mode: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid, no padding with meaning.
    unsafe impl aya::Pod for super::Inode {}
    unsafe impl aya::Pod for super::Seen {}
}
