//! What the seccomp tests share: a running `guard seccomp record`, and the guard's CLI.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use guard::seccomp::recording::RecordingFile;

use crate::{guard_bin, wait_within};

/// A running `guard seccomp record`, stopped with SIGINT.
pub struct Recording {
    child: std::process::Child,
    out: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Recording {
    pub fn start(what: &[&str], out: &Path) -> Recording {
        Self::start_env(what, out, &[])
    }

    pub fn start_env(what: &[&str], out: &Path, env: &[(&str, &str)]) -> Recording {
        let mut child = Command::new(guard_bin())
            .envs(env.iter().copied())
            .args(["seccomp", "record"])
            .args(what)
            .args(["--duration", "300", "-o"])
            .arg(out)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = BufReader::new(child.stderr.take().unwrap());
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if line.contains("recording") {
                    let _ = tx.send(());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("the recorder did not start:\n{}", stderr.lock().unwrap());
        }
        Recording { child, out: out.to_path_buf(), stderr }
    }

    pub fn stop(mut self) -> RecordingFile {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGINT).unwrap();
        let Some(status) = wait_within(&mut self.child, Duration::from_secs(30)).unwrap() else {
            let _ = self.child.kill();
            panic!("the recorder did not stop within 30 s of SIGINT:\n{}", self.stderr.lock().unwrap());
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(status.success(), "recorder: {status}\n{}", self.stderr.lock().unwrap());
        RecordingFile::load(&self.out).unwrap()
    }
}

/// `guard ARGS`, run to its end.
pub fn guard(args: &[&str]) -> std::process::Output {
    Command::new(guard_bin()).args(args).output().unwrap()
}

/// Its output, once it succeeded.
pub fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
