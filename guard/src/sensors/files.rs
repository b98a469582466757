//! The file sensor: a fanotify group with directory marks (`FAN_REPORT_DFID_NAME`), for the
//! few directories where a notebook can plant persistence.
//!
//! Why fanotify and not BPF: this kernel offers no BPF hook after path resolution other than
//! LSM and fentry, which are not available everywhere; syscall tracepoints see a path as the
//! caller wrote it (relative to a cwd or a dirfd, racy to resolve). A directory mark costs
//! nothing for I/O anywhere else, reports the directory (as a file handle) and the name after
//! the fact, and works on overlayfs (6.6+) and on the volumes homes live on. Its one price:
//! the writer's pid is only reported to a listener with CAP_SYS_ADMIN.

pub mod decode;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::mpsc::UnboundedSender;

pub use decode::{DirKey, FileEvent, Record};

// fanotify(7) constants (include/uapi/linux/fanotify.h).
const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_CLASS_NOTIF: u32 = 0x0;
const FAN_REPORT_DIR_FID: u32 = 0x400;
const FAN_REPORT_NAME: u32 = 0x800;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
pub const FAN_ATTRIB: u64 = 0x4;
pub const FAN_CLOSE_WRITE: u64 = 0x8;
pub const FAN_MOVED_TO: u64 = 0x80;
pub const FAN_CREATE: u64 = 0x100;
pub const FAN_ONDIR: u64 = 0x4000_0000;
const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
/// `name_to_handle_at` flag for a handle that identifies but need not reopen (6.5+), what
/// fanotify reports for overlayfs.
const AT_HANDLE_FID: i32 = 0x200;
const MAX_HANDLE: usize = 128;
const CAP_SYS_ADMIN: u32 = 21;
/// How long the reader lets events gather after the first one wakes it. The kernel merges
/// an event into one still queued for the same file, name and writer, so a storm (a loop of
/// chmods, small files written over and over) is read as a few events per pace, not one per
/// call; each alone cost the agent a wake-up and a lookup, about as much CPU as the storm.
const READ_PACE: Duration = Duration::from_millis(20);

/// Counters the reader keeps (the pipeline reports them).
#[derive(Default, Debug)]
pub struct FileStats {
    /// Queue overflows the kernel reported (events lost).
    pub overflows: AtomicU64,
    /// Records that did not decode.
    pub malformed: AtomicU64,
}

impl FileStats {
    /// The file events of one read into `events`, overflows and bad records counted.
    fn take(&self, read: &[u8], events: &mut Vec<FileEvent>) {
        for r in decode::records(read) {
            match r {
                Ok(Record::File(e)) => events.push(e),
                Ok(Record::Overflow) => {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Record::Other { .. }) => {}
                Err(e) => {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "fanotify record");
                }
            }
        }
    }
}

pub struct FileSensor {
    fd: Arc<OwnedFd>,
    /// The listener sees writers' pids (CAP_SYS_ADMIN).
    pub writer_pids: bool,
    pub stats: Arc<FileStats>,
}

impl FileSensor {
    pub fn new() -> io::Result<Self> {
        let flags = FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_NOTIF | FAN_REPORT_DIR_FID | FAN_REPORT_NAME;
        // SAFETY: plain syscall with flag arguments; the fd is owned right away.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd from the kernel.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Self { fd, writer_pids: has_cap(CAP_SYS_ADMIN), stats: Arc::default() })
    }

    /// Watches directory `dir` (an open directory, not O_PATH) for names created or moved in.
    /// Returns the key its events carry.
    pub fn mark(&self, dir: &OwnedFd) -> io::Result<DirKey> {
        let mask = FAN_CREATE | FAN_MOVED_TO | FAN_ONDIR | FAN_EVENT_ON_CHILD;
        // SAFETY: both fds are open; a null path marks `dir` itself.
        let r =
            unsafe { libc::fanotify_mark(self.fd.as_raw_fd(), FAN_MARK_ADD, mask, dir.as_raw_fd(), std::ptr::null()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        dir_key(dir)
    }

    /// Watches file `name` in directory `dir` (not following a symlink) for writes; its events
    /// carry the directory's key and the name.
    pub fn mark_file(&self, dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))?;
        // SAFETY: both fds are open; `c` is a NUL-terminated name relative to `dir`.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW,
                FAN_CLOSE_WRITE,
                dir.as_raw_fd(),
                c.as_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches the whole file system `on` is on for metadata changes (chmod: what was made
    /// executable) and files made (one created executable). Not every file system allows it
    /// (overlayfs refuses): the caller marks the one below. Returns the file system's id.
    pub fn mark_filesystem(&self, on: &OwnedFd) -> io::Result<[i32; 2]> {
        // SAFETY: both fds are open; a null path marks the file system of `on`.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                FAN_ATTRIB | FAN_CREATE,
                on.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(dir_key(on)?.fsid)
    }

    /// What is queued right now (a non-blocking read, from any thread: each event is read
    /// once, here or by the reader).
    pub fn read_now(&self) -> Vec<FileEvent> {
        let mut buf = vec![0u8; 16 << 10];
        let mut events = Vec::new();
        loop {
            // SAFETY: the buffer is as long as we say; the fd is non-blocking.
            let got = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                return events;
            }
            self.stats.take(&buf[..got as usize], &mut events);
        }
    }

    /// Reads events on a thread of its own until `stop`, sending each read's records.
    pub fn spawn_reader(
        &self,
        tx: UnboundedSender<Vec<FileEvent>>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let (fd, stats) = (self.fd.clone(), self.stats.clone());
        std::thread::Builder::new().name("guard-files".into()).spawn(move || read_loop(&fd, &tx, &stop, &stats))
    }
}

fn read_loop(fd: &OwnedFd, tx: &UnboundedSender<Vec<FileEvent>>, stop: &AtomicBool, stats: &FileStats) {
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a bounded wait so `stop` is seen.
        let n = unsafe { libc::poll(&mut pfd, 1, Duration::from_millis(200).as_millis() as i32) };
        if n <= 0 {
            continue;
        }
        std::thread::sleep(READ_PACE);
        loop {
            // SAFETY: the buffer is as long as we say.
            let got = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                break;
            }
            let mut events = Vec::new();
            stats.take(&buf[..got as usize], &mut events);
            if !events.is_empty() && tx.send(events).is_err() {
                return;
            }
        }
    }
}

/// `struct file_handle` with room for MAX_HANDLE bytes.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; MAX_HANDLE],
}

/// Opens directory `key` on the file system `mount` is on (`open_by_handle_at`, which needs
/// CAP_DAC_READ_SEARCH and a file system whose handles reopen).
pub fn open_dir_by_key(mount: &OwnedFd, key: &DirKey) -> io::Result<OwnedFd> {
    if key.handle.len() > MAX_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = Handle { bytes: key.handle.len() as u32, kind: key.handle_type, data: [0; MAX_HANDLE] };
    h.data[..key.handle.len()].copy_from_slice(&key.handle);
    // SAFETY: `h` is a file_handle whose header says how many of its bytes are the handle.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &h as *const Handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The key fanotify's events carry for `dir`: its file system id and file handle.
pub fn dir_key(dir: &OwnedFd) -> io::Result<DirKey> {
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    // AT_HANDLE_FID first: the form fanotify reports for file systems whose handles cannot
    // be opened again (overlayfs); older kernels refuse the flag and the plain form is the same.
    for extra in [AT_HANDLE_FID, 0] {
        let mut h = Handle { bytes: MAX_HANDLE as u32, kind: 0, data: [0; MAX_HANDLE] };
        let mut mount_id = 0;
        // SAFETY: `h` is a file_handle with room for MAX_HANDLE bytes, as its header says;
        // an empty path with AT_EMPTY_PATH names `dir` itself.
        let r = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                dir.as_raw_fd(),
                c"".as_ptr(),
                &mut h as *mut Handle,
                &mut mount_id as *mut i32,
                libc::AT_EMPTY_PATH | extra,
            )
        };
        if r < 0 {
            last = io::Error::last_os_error();
            continue;
        }
        let fsid = nix::sys::statfs::fstatfs(dir).map_err(io::Error::from)?.filesystem_id();
        // SAFETY: fsid_t is two ints (statfs(2)); nix keeps it opaque.
        let fsid: [i32; 2] = unsafe { std::mem::transmute(fsid) };
        let n = (h.bytes as usize).min(MAX_HANDLE);
        return Ok(DirKey { fsid, handle_type: h.kind, handle: h.data[..n].into() });
    }
    Err(last)
}

/// Whether this process holds capability `cap` (from /proc/self/status).
fn has_cap(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|bits| bits & (1 << cap) != 0)
}
