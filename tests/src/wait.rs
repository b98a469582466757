//! Bounded waits: a child, a command's output, killed with its group when it hangs.

use crate::*;

/// Waits for `pid` and fails unless it exited 0.
pub fn wait_ok(pid: Pid) -> Result<()> {
    match waitpid(pid, None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => bail!("child {pid} ended with {other:?}"),
    }
}

/// Waits for `child` to exit, at most `limit`: `None` if it is still running then.
pub fn wait_within(child: &mut std::process::Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to the end, as `Command::output`, but never waits past `limit`: a child that
/// hangs (a runtime stuck on its container, a kernel that stopped answering) is killed with
/// its whole process group, and the error carries what it printed. A hung test would
/// otherwise hold CI until its overall timeout and say nothing.
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> Result<std::process::Output> {
    use std::{io::Read, os::unix::process::CommandExt, process::Stdio};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = wait_within(&mut child, limit)?;
    if status.is_none() {
        let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
        let _ = child.wait();
    }
    // Anything that left the group and still holds the pipes must not hang the reader either.
    let collect = |h: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(5);
        while !h.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() {
            h.join().unwrap_or_default()
        } else {
            b"(still held open by a process outside the group)".to_vec()
        }
    };
    let (stdout, stderr) = (collect(out), collect(err));
    match status {
        Some(status) => Ok(std::process::Output { status, stdout, stderr }),
        None => bail!(
            "{cmd:?} did not finish within {} s and was killed\nstdout:\n{}\nstderr:\n{}",
            limit.as_secs_f64(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_kills_a_hung_child_and_its_group_and_keeps_what_it_printed() {
        let dir = TempDir::new("within").unwrap();
        let pidfile = dir.0.join("bg.pid");
        let script = format!("sleep 60 & echo $! > {}; echo started; wait", pidfile.display());
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        let t0 = Instant::now();
        let err = output_within(&mut cmd, Duration::from_millis(500)).unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        assert!(err.contains("did not finish within 0.5 s") && err.contains("started"), "{err}");
        // The background sleep was in the group: it is gone too (a zombie at most until init reaps it).
        let stat = format!("/proc/{}/stat", fs::read_to_string(&pidfile).unwrap().trim());
        let gone = || fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z "));
        let until = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the group's other member still runs: {:?}", fs::read_to_string(&stat));

        let mut ok = std::process::Command::new("/bin/sh");
        ok.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output_within(&mut ok, Duration::from_secs(30)).unwrap();
        assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
    }
}
