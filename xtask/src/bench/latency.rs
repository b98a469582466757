//! Exec-to-alert latency on the file sink.

use super::*;

/// Exec-to-alert latency on the file sink: spawn `curl --version` in the notebook (a network
/// tool: one alert) and time until its alert line is in the file, from the exec (the alert's
/// own kernel timestamp) and from the spawn (which also counts fork and joining the cgroup).
pub(super) fn latency(c: &mut Ctx) -> Result<()> {
    const SAMPLES: usize = 200;
    let g = c.start_guard(&[])?;
    let (mut from_exec, mut from_spawn) = (Vec::new(), Vec::new());
    let mut offset = 0u64;
    // The observer must not add its own delay to what it measures. Sleeping between looks at
    // the file did: with curl busy on a core, a 200 µs sleep often ended a millisecond or more
    // late (the woken observer waited for curl's time slice), which was most of the measured
    // median and all of its tail. So the file's writes wake the observer (inotify), and it
    // runs as a real-time thread while it measures, so it is served as soon as it wakes.
    let watch = FileWatch::new(&g.alerts)?;
    let realtime = Realtime::enter();
    for i in 0..SAMPLES + 5 {
        let marker = format!("bench-latency-{i}");
        let t = Instant::now();
        let mut cmd = Command::new("/usr/bin/curl");
        cmd.args(["--version", "-H", &marker]).stdout(Stdio::null());
        let _procs = in_cgroup(&mut cmd, &c.nb)?;
        let mut child = cmd.spawn()?;
        // Read only what was appended since the last sample: re-reading the whole file every
        // 200 µs would compete with the agent for the CPU and inflate what we measure.
        let mut seen = String::new();
        let line = loop {
            let grown = fs::File::open(&g.alerts).and_then(|mut f| {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(offset))?;
                let mut buf = String::new();
                f.read_to_string(&mut buf)?;
                Ok(buf)
            });
            if let Ok(buf) = grown {
                offset += buf.len() as u64;
                seen.push_str(&buf);
            }
            // Complete lines only: a read may catch the agent halfway through writing one.
            let complete = seen.rfind('\n').map_or("", |end| &seen[..end]);
            if let Some(l) = complete.lines().find(|l| l.contains(&marker)) {
                break l.to_string();
            }
            if t.elapsed() > Duration::from_secs(5) {
                bail!("no alert for {marker} within 5 s");
            }
            watch.wait(Duration::from_millis(5));
        };
        let now = time::OffsetDateTime::now_utc();
        let spawn_ms = t.elapsed().as_secs_f64() * 1000.0;
        let alert: Value = serde_json::from_str(&line)?;
        let exec_at = alert["time"]
            .as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
            .context("alert without a parsable time")?;
        // The first few warm the agent up and are not counted.
        if i >= 5 {
            from_exec.push((now - exec_at).as_seconds_f64() * 1000.0);
            from_spawn.push(spawn_ms);
        }
        child.wait()?;
    }
    g.stop()?;
    let q = |v: &[f64], p: f64| {
        let s = sorted(v);
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    };
    let row = |name: &str, v: &[f64]| {
        format!("| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |", q(v, 0.5), q(v, 0.9), q(v, 0.99), q(v, 1.0))
    };
    c.results.insert(
        "exec-to-alert latency (file sink)".into(),
        json!({"samples": from_exec.len(),
               "from_exec_ms": {"p50": q(&from_exec, 0.5), "p90": q(&from_exec, 0.9), "p99": q(&from_exec, 0.99), "max": q(&from_exec, 1.0)},
               "from_spawn_ms": {"p50": q(&from_spawn, 0.5), "p90": q(&from_spawn, 0.9), "p99": q(&from_spawn, 0.99), "max": q(&from_spawn, 1.0)}}),
    );
    eprintln!("bench: exec-to-alert p50 {:.2} ms, p99 {:.2} ms", q(&from_exec, 0.5), q(&from_exec, 0.99));
    let observer = if realtime.0 {
        "The observer is woken by the file's writes (inotify) and runs as a real-time thread while it measures, so its own scheduling is not counted: it used to sleep 200 µs between looks, and with curl busy on a core those sleeps ended up to milliseconds late."
    } else {
        "The observer is woken by the file's writes (inotify); it could not run real-time, so its own scheduling delays are counted too."
    };
    c.md.push(prose::render(
        prose::LATENCY,
        &[
            ("samples", SAMPLES.to_string()),
            ("observer", observer.to_string()),
            ("from_exec", row("from the exec", &from_exec)),
            ("from_spawn", row("from the spawn", &from_spawn)),
        ],
    )?);
    Ok(())
}

/// Wakes its owner when a file is written to (inotify `IN_MODIFY`).
pub(super) struct FileWatch(OwnedFd);

impl FileWatch {
    pub(super) fn new(path: &Path) -> Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain inotify calls; the fd is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY) } < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("watching {}", path.display()));
        }
        Ok(Self(fd))
    }

    /// Returns once the file was written to since the last call, or after `timeout`.
    pub(super) fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let mut buf = [0u8; 4096];
        // SAFETY: one pollfd; reads into a buffer of the size given.
        unsafe {
            libc::poll(&mut pfd, 1, timeout.as_millis() as i32);
            while libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    }
}

/// The calling thread runs as SCHED_FIFO until dropped; the processes it spawns do not
/// (`SCHED_RESET_ON_FORK`). Without the privilege: a warning, and the thread's usual class.
pub(super) struct Realtime(bool);

impl Realtime {
    pub(super) fn enter() -> Self {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: changes this thread's scheduling class only.
        let ok = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) } == 0;
        if !ok {
            eprintln!(
                "bench: the latency observer could not run real-time ({}): its own delays count",
                std::io::Error::last_os_error()
            );
        }
        Self(ok)
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.0 {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}
