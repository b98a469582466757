//! Ring-buffer records → typed events. Records come from the kernel, but a short or unknown
//! record is still an error with a reason, never a panic.

use std::os::unix::ffi::OsStrExt;
use std::{ffi::OsString, os::unix::ffi::OsStringExt, path::PathBuf};

use guard_abi::{
    egress_verdict, exec_flags, EgressEvent, EventHeader, EventKind, ExecHead, ExitEvent, ForkEvent, SocketEvent,
    ARGS_LEN, DNAME_LEN, EXEC_HEAD_LEN, PATH_LEN, RECORD_FORMAT,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record of kind {kind} has {len} bytes, needs {need}")]
    Truncated { kind: &'static str, len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    /// Written in another layout: by an earlier guard's programs into the ring this agent
    /// adopted from it.
    #[error("record in layout {found}, not this guard's {RECORD_FORMAT} (written by another version's programs)")]
    Format { found: u32 },
    #[error("exec record claims {0} argv bytes (max {ARGS_LEN})")]
    ArgsLen(u32),
    #[error("exec record claims a {field} of {len} bytes (max {max})")]
    StringLen { field: &'static str, len: usize, max: usize },
    #[error("dns record's question name ({len} bytes) or address count ({addrs}) is malformed")]
    DnsName { len: usize, addrs: u8 },
}

/// Fields every event has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub ktime_ns: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
}

/// The identity of a loaded binary: which file, not which name, as it was — the inode's
/// change time is part of it, so a file modified in place (write, truncate, chmod) is another
/// identity, even where the inode number stays (an overlayfs copy-up keeps it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Userspace dev_t (as `stat(2)` reports it).
    pub dev: u64,
    pub ino: u64,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
}

impl FileId {
    pub fn from_kernel(kdev: u32, ino: u64, ctime_sec: i64, ctime_nsec: u32) -> Self {
        // The kernel's internal dev_t is MAJOR<<20 | MINOR.
        let dev = libc::makedev(kdev >> 20, kdev & 0xfffff);
        Self { dev, ino, ctime_sec, ctime_nsec }
    }

    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self { dev: meta.dev(), ino: meta.ino(), ctime_sec: meta.ctime(), ctime_nsec: meta.ctime_nsec() as u32 }
    }

    /// Which file, whatever has changed in it since (a directory whose entries change).
    pub fn file(self) -> Self {
        Self { ctime_sec: 0, ctime_nsec: 0, ..self }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub meta: Meta,
    pub ppid: u32,
    pub old_pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// The path the kernel executed (`/dev/fd/N` for an fd-based exec).
    pub filename: PathBuf,
    pub filename_truncated: bool,
    /// The interpreter the kernel ran for a `#!` script (or binfmt_misc).
    pub interp: Option<PathBuf>,
    pub interp_truncated: bool,
    pub exe: FileId,
    pub exe_nlink: u32,
    /// Dentry name of the loaded file (`memfd:…` for a memfd).
    pub exe_name: OsString,
    pub argc: u32,
    /// Shared with the process table's entry.
    pub argv: std::sync::Arc<[OsString]>,
    pub argv_truncated: bool,
    pub argv_unreadable: bool,
    /// Raw `exec_flags` (enforcement outcome among them).
    pub kernel_flags: u32,
    /// Bits 0..2: stdin, stdout, stderr are sockets.
    pub stdio_sockets: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub meta: Meta,
    pub child_tgid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub meta: Meta,
    pub exit_code: u32,
}

/// A connect or send the notebook's egress policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub meta: Meta,
    pub addr: std::net::IpAddr,
    pub port: u16,
    /// "tcp", "udp" or the protocol number.
    pub protocol: String,
    /// Refused in the kernel (enforce) rather than let through (monitor).
    pub denied: bool,
    /// sendmsg without connect (UDP `sendto`).
    pub sendmsg: bool,
    pub comm: String,
    /// The notebook whose policy judged it (the key of its DNS answers).
    pub subject: u64,
    /// The name that last resolved to `addr` for that notebook (set by enrichment).
    pub name: Option<String>,
}

/// A packet, raw or ICMP datagram socket opened in a notebook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub meta: Meta,
    /// 0 when the hook could not read the arguments (io_uring, i386 socketcall).
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    /// The system call it came through (native x86_64 numbering), when known.
    pub syscall: Option<u32>,
    /// Refused in the kernel (an ICMP or raw IP socket under enforcement).
    pub denied: bool,
    pub comm: String,
}

/// A cgroup v2 cgroup was made: `meta.cgroup_id` is its id (not the maker's cgroup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMade {
    pub meta: Meta,
    /// Relative to the cgroup2 root, with a leading `/`.
    pub path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Exec(Box<Exec>),
    Fork(Fork),
    Exit(Exit),
    Egress(Egress),
    Socket(Socket),
    Cgroup(CgroupMade),
    Dns(Dns),
    Fanout(Fanout),
    Stratum(Stratum),
    Written(Written),
}

impl Event {
    pub fn meta(&self) -> &Meta {
        match self {
            Event::Exec(e) => &e.meta,
            Event::Fork(f) => &f.meta,
            Event::Exit(x) => &x.meta,
            Event::Egress(g) => &g.meta,
            Event::Socket(k) => &k.meta,
            Event::Cgroup(c) => &c.meta,
            Event::Dns(d) => &d.meta,
            Event::Fanout(f) => &f.meta,
            Event::Stratum(s) => &s.meta,
            Event::Written(w) => &w.meta,
        }
    }
}

/// Copies the record into a zeroed `T` (all-integer types: zero is valid). Records are not
/// guaranteed to be aligned for `T` in the slice we get, hence the copy.
fn read_record<T: Copy>(buf: &[u8], need: usize, kind: EventKind) -> Result<T, DecodeError> {
    if buf.len() < need {
        return Err(DecodeError::Truncated { kind: kind.name(), len: buf.len(), need });
    }
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    let n = buf.len().min(std::mem::size_of::<T>());
    // SAFETY: T is one of the repr(C) ABI structs made only of integers and byte arrays, for
    // which the all-zero pattern and any byte pattern are valid; n <= size_of::<T>().
    unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), v.as_mut_ptr().cast::<u8>(), n);
        Ok(v.assume_init())
    }
}

fn meta(h: &EventHeader) -> Meta {
    Meta { ktime_ns: h.ktime_ns, cpu: h.cpu, pid: h.pid, tgid: h.tgid, cgroup_id: h.cgroup_id }
}

/// An address as the ABI carries it: IPv4 in the first 4 bytes when `v4`, else IPv6.
pub(crate) fn ip(v4: bool, a: [u8; 16]) -> std::net::IpAddr {
    if v4 {
        std::net::IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        std::net::IpAddr::from(a)
    }
}

/// "tcp", "udp", or the IP protocol number.
pub fn l4proto(n: u32) -> String {
    match n {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    }
}

/// Bytes up to the first NUL.
pub fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// NUL-separated argv block → arguments. Empty arguments are kept; the terminating NUL of
/// the last argument does not make an extra one. A truncated block's last piece is partial.
pub fn split_args(block: &[u8]) -> Vec<OsString> {
    if block.is_empty() {
        return Vec::new();
    }
    let body = block.strip_suffix(&[0]).unwrap_or(block);
    body.split(|&c| c == 0).map(|a| OsString::from_vec(a.to_vec())).collect()
}

/// An exec record: its head, then filename, interp, exe name and argv, packed.
fn decode_exec(buf: &[u8]) -> Result<Event, DecodeError> {
    let h: ExecHead = read_record(buf, EXEC_HEAD_LEN, EventKind::Exec)?;
    if h.args_len as usize > ARGS_LEN {
        return Err(DecodeError::ArgsLen(h.args_len));
    }
    let lens = [
        ("filename", h.filename_len as usize, PATH_LEN - 1),
        ("interp", h.interp_len as usize, PATH_LEN - 1),
        ("exe name", h.exe_name_len as usize, DNAME_LEN - 1),
    ];
    if let Some(&(field, len, max)) = lens.iter().find(|(_, len, max)| len > max) {
        return Err(DecodeError::StringLen { field, len, max });
    }
    let need = EXEC_HEAD_LEN + lens.iter().map(|l| l.1).sum::<usize>() + h.args_len as usize;
    if buf.len() < need {
        return Err(DecodeError::Truncated { kind: "exec", len: buf.len(), need });
    }
    let mut rest = &buf[EXEC_HEAD_LEN..need];
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n);
        rest = b;
        a
    };
    let (filename, interp, exe_name) = (take(lens[0].1), take(lens[1].1), take(lens[2].1));
    let args = take(h.args_len as usize);
    let f = h.flags;
    let path = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
    Ok(Event::Exec(Box::new(Exec {
        meta: meta(&h.hdr),
        ppid: h.ppid,
        old_pid: h.old_pid,
        uid: h.uid,
        gid: h.gid,
        comm: String::from_utf8_lossy(cstr(&h.comm)).into_owned(),
        filename: path(filename),
        filename_truncated: f & exec_flags::FILENAME_TRUNCATED != 0,
        interp: (f & exec_flags::HAS_INTERP != 0).then(|| path(interp)),
        interp_truncated: f & exec_flags::INTERP_TRUNCATED != 0,
        exe: FileId::from_kernel(h.exe_dev, h.exe_ino, h.exe_ctime_sec, h.exe_ctime_nsec),
        exe_nlink: h.exe_nlink,
        exe_name: OsString::from_vec(exe_name.to_vec()),
        argc: h.argc,
        argv: split_args(args).into(),
        argv_truncated: f & exec_flags::ARGS_TRUNCATED != 0,
        argv_unreadable: f & exec_flags::ARGS_UNREADABLE != 0,
        kernel_flags: f,
        stdio_sockets: h.stdio_sockets,
    })))
}

pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < std::mem::size_of::<EventHeader>() {
        return Err(DecodeError::Short(buf.len()));
    }
    let h: EventHeader = read_record(buf, std::mem::size_of::<EventHeader>(), EventKind::Exec)?;
    if h.kind >> 16 != RECORD_FORMAT {
        return Err(DecodeError::Format { found: h.kind >> 16 });
    }
    let kind = h.kind & 0xffff;
    match EventKind::from_u32(kind) {
        Some(EventKind::Exec) => decode_exec(buf),
        Some(EventKind::Fork) => {
            let ev: ForkEvent = read_record(buf, std::mem::size_of::<ForkEvent>(), EventKind::Fork)?;
            Ok(Event::Fork(Fork { meta: meta(&ev.hdr), child_tgid: ev.child_tgid }))
        }
        Some(EventKind::Exit) => {
            let ev: ExitEvent = read_record(buf, std::mem::size_of::<ExitEvent>(), EventKind::Exit)?;
            Ok(Event::Exit(Exit { meta: meta(&ev.hdr), exit_code: ev.exit_code }))
        }
        Some(EventKind::Egress) => {
            let ev: EgressEvent = read_record(buf, std::mem::size_of::<EgressEvent>(), EventKind::Egress)?;
            let addr = ip(ev.v4 != 0, ev.addr);
            let protocol = l4proto(ev.protocol);
            Ok(Event::Egress(Egress {
                meta: meta(&ev.hdr),
                addr,
                port: ev.port,
                protocol,
                denied: ev.verdict == egress_verdict::DENIED,
                sendmsg: ev.sendmsg != 0,
                comm: String::from_utf8_lossy(cstr(&ev.comm)).into_owned(),
                subject: ev.subject,
                name: None,
            }))
        }
        Some(EventKind::Socket) => {
            let ev: SocketEvent = read_record(buf, std::mem::size_of::<SocketEvent>(), EventKind::Socket)?;
            Ok(Event::Socket(Socket {
                meta: meta(&ev.hdr),
                family: ev.family,
                // The type word also carries SOCK_NONBLOCK / SOCK_CLOEXEC (SOCK_TYPE_MASK).
                sock_type: ev.sock_type & 0xf,
                protocol: ev.protocol,
                syscall: (ev.syscall != guard_abi::SYSCALL_UNKNOWN).then_some(ev.syscall),
                denied: ev.verdict == egress_verdict::DENIED,
                comm: String::from_utf8_lossy(cstr(&ev.comm)).into_owned(),
            }))
        }
        Some(EventKind::Cgroup) => {
            let ev: guard_abi::CgroupEvent =
                read_record(buf, std::mem::size_of::<guard_abi::CgroupEvent>(), EventKind::Cgroup)?;
            let len = (ev.path_len as usize).min(ev.path.len());
            Ok(Event::Cgroup(CgroupMade {
                meta: meta(&ev.hdr),
                path: PathBuf::from(std::ffi::OsStr::from_bytes(&ev.path[..len])),
            }))
        }
        Some(EventKind::Dns) => dns::decode(buf).map(Event::Dns),
        Some(EventKind::Fanout) => fanout::decode(buf).map(Event::Fanout),
        Some(EventKind::Stratum) => stratum::decode(buf).map(Event::Stratum),
        Some(EventKind::Written) => written::decode(buf).map(Event::Written),
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

mod dns;
mod fanout;
mod stratum;
mod written;
pub use dns::Dns;
pub use fanout::Fanout;
pub use stratum::Stratum;
pub use written::Written;

#[cfg(test)]
mod tests;
