//! fanotify records → file events. The kernel writes them, but a short or odd record is still
//! an error with a reason, never a panic.

use std::{ffi::OsString, os::unix::ffi::OsStringExt};

/// `struct fanotify_event_metadata`'s size and version (include/uapi/linux/fanotify.h).
const METADATA_LEN: usize = 24;
const METADATA_VERSION: u8 = 3;
const INFO_HEADER_LEN: usize = 4;
/// Info record types.
const INFO_DFID_NAME: u8 = 2;
/// The queue overflowed: events were dropped.
pub const FAN_Q_OVERFLOW: u64 = 0x4000;

/// Which directory: the file system's id and the directory's file handle, as fanotify
/// reports it and as `name_to_handle_at` gives it when the directory is marked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DirKey {
    pub fsid: [i32; 2],
    pub handle_type: i32,
    pub handle: Box<[u8]>,
}

/// A name created, written or moved into a watched directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    pub dir: DirKey,
    pub name: OsString,
    /// fanotify's mask (`FAN_CREATE`, `FAN_MOVED_TO`, `FAN_CLOSE_WRITE`, `FAN_ONDIR`).
    pub mask: u64,
    /// The writer (tgid); None when the listener may not see it (no CAP_SYS_ADMIN) or it
    /// was in another PID namespace.
    pub pid: Option<u32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    File(FileEvent),
    /// The kernel's queue was full: events were lost.
    Overflow,
    /// A record with no directory and name (not asked for): skipped.
    Other {
        mask: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileDecodeError {
    #[error("fanotify record at {at} is cut short ({left} bytes left, needs {need})")]
    Short { at: usize, left: usize, need: usize },
    #[error("fanotify metadata version {0}, expected {METADATA_VERSION}")]
    Version(u8),
    #[error("fanotify info record at {at} is malformed: {why}")]
    Info { at: usize, why: &'static str },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    u32_at(b, at) as i32
}

/// Every record in one `read` of the fanotify descriptor. Stops at the first malformed one
/// (what follows cannot be framed).
pub fn records(buf: &[u8]) -> Vec<Result<Record, FileDecodeError>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let left = buf.len() - at;
        if left < METADATA_LEN {
            out.push(Err(FileDecodeError::Short { at, left, need: METADATA_LEN }));
            break;
        }
        let len = u32_at(buf, at) as usize;
        if len < METADATA_LEN || len > left {
            out.push(Err(FileDecodeError::Short { at, left, need: len.max(METADATA_LEN) }));
            break;
        }
        if buf[at + 4] != METADATA_VERSION {
            out.push(Err(FileDecodeError::Version(buf[at + 4])));
            break;
        }
        out.push(record(&buf[at..at + len], at));
        at += len;
    }
    out
}

fn record(r: &[u8], at: usize) -> Result<Record, FileDecodeError> {
    let meta_len = usize::from(u16_at(r, 6));
    let mask = u64::from_ne_bytes(r[8..16].try_into().map_err(|_| FileDecodeError::Info { at, why: "mask" })?);
    let pid = i32_at(r, 20);
    if mask & FAN_Q_OVERFLOW != 0 {
        return Ok(Record::Overflow);
    }
    let mut off = meta_len.max(METADATA_LEN);
    while off + INFO_HEADER_LEN <= r.len() {
        let kind = r[off];
        let len = usize::from(u16_at(r, off + 2));
        if len < INFO_HEADER_LEN || off + len > r.len() {
            return Err(FileDecodeError::Info { at: at + off, why: "length outside the record" });
        }
        if kind == INFO_DFID_NAME {
            let info = &r[off..off + len];
            // header, fsid (2 × i32), handle_bytes (u32), handle_type (i32), handle, name\0
            if info.len() < INFO_HEADER_LEN + 16 {
                return Err(FileDecodeError::Info { at: at + off, why: "too short for a file handle" });
            }
            let fsid = [i32_at(info, 4), i32_at(info, 8)];
            let hlen = u32_at(info, 12) as usize;
            let handle_type = i32_at(info, 16);
            let h = 20;
            let Some(handle) = info.get(h..h + hlen) else {
                return Err(FileDecodeError::Info { at: at + off, why: "handle longer than the record" });
            };
            let rest = &info[h + hlen..];
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(FileDecodeError::Info { at: at + off, why: "name not terminated" })?;
            return Ok(Record::File(FileEvent {
                dir: DirKey { fsid, handle_type, handle: handle.into() },
                name: OsString::from_vec(rest[..end].to_vec()),
                mask,
                pid: (pid > 0).then_some(pid as u32),
            }));
        }
        off += len;
    }
    Ok(Record::Other { mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(mask: u64, pid: i32, name: &[u8], handle: &[u8]) -> Vec<u8> {
        let mut info = vec![INFO_DFID_NAME, 0, 0, 0];
        info.extend(7i32.to_ne_bytes());
        info.extend(9i32.to_ne_bytes());
        info.extend((handle.len() as u32).to_ne_bytes());
        info.extend(1i32.to_ne_bytes());
        info.extend(handle);
        info.extend(name);
        info.push(0);
        while info.len() % 4 != 0 {
            info.push(0);
        }
        let ilen = info.len() as u16;
        info[2..4].copy_from_slice(&ilen.to_ne_bytes());
        let mut r = Vec::new();
        r.extend(((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        r.extend([METADATA_VERSION, 0]);
        r.extend((METADATA_LEN as u16).to_ne_bytes());
        r.extend(mask.to_ne_bytes());
        r.extend((-1i32).to_ne_bytes());
        r.extend(pid.to_ne_bytes());
        r.extend(info);
        r
    }

    #[test]
    fn records_give_directory_name_and_writer() {
        let mut buf = rec(0x100, 42, b"00-x.py", &[1, 2, 3, 4, 5, 6, 7, 8]);
        buf.extend(rec(0x8, 0, b"b", &[9; 12]));
        let got = records(&buf);
        assert_eq!(got.len(), 2);
        let Ok(Record::File(a)) = &got[0] else { panic!("{got:?}") };
        assert_eq!((a.name.to_str(), a.mask, a.pid, a.dir.fsid), (Some("00-x.py"), 0x100, Some(42), [7, 9]));
        assert_eq!(&*a.dir.handle, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let Ok(Record::File(b)) = &got[1] else { panic!("{got:?}") };
        assert_eq!((b.pid, b.dir.handle.len()), (None, 12), "pid 0: not visible to this listener");
    }

    #[test]
    fn short_and_odd_records_are_errors_not_panics() {
        let good = rec(0x100, 1, b"x", &[1; 8]);
        for cut in [1, 10, 23, 30, good.len() - 1] {
            let got = records(&good[..cut]);
            assert!(got.iter().any(Result::is_err), "cut at {cut}: {got:?}");
        }
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        assert_eq!(records(&bad_version), vec![Err(FileDecodeError::Version(2))]);
        let mut long_handle = good.clone();
        long_handle[METADATA_LEN + 12..METADATA_LEN + 16].copy_from_slice(&500u32.to_ne_bytes());
        assert!(matches!(records(&long_handle)[0], Err(FileDecodeError::Info { .. })));
        let mut overflow = good;
        overflow[8..16].copy_from_slice(&FAN_Q_OVERFLOW.to_ne_bytes());
        assert_eq!(records(&overflow), vec![Ok(Record::Overflow)]);
    }
}
