//! The agent under test: started, watched (RSS, CPU, programs) and stopped, with the totals
//! and losses it reports.

use super::*;

/// What the agent said when it stopped.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) received: u64,
    pub(super) lost_kernel: u64,
    pub(super) lost_queue: u64,
}

impl Totals {
    pub(super) fn parse(line: &str) -> Option<Self> {
        let field = |k: &str| -> Option<u64> {
            line.split_whitespace().find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
        };
        Some(Self {
            received: field("received")?,
            lost_kernel: field("lost_kernel")?,
            lost_queue: field("lost_queue")?,
        })
    }

    pub(super) fn lost(&self) -> u64 {
        self.lost_kernel + self.lost_queue
    }
}

pub(super) struct Guard {
    pub(super) child: Child,
    pub(super) alerts: PathBuf,
    /// The kernel programs the agent attached, from its log.
    pub(super) program_ids: Vec<u32>,
    /// The agent's last log line mentioning "stopped".
    pub(super) last_words: Arc<Mutex<String>>,
    pub(super) stderr: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn start_guard(bin: &Path, dir: &Path, extra: &[&str]) -> Result<Guard> {
    let alerts = dir.join("alerts.json");
    let _ = fs::remove_file(&alerts);
    let mut child = Command::new(bin)
        .args(["run", "--no-pin", "--spool-dir"])
        .arg(dir.join("spool"))
        .arg("--output")
        .arg(format!("file:{}", alerts.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut program_ids = Vec::new();
    loop {
        let l = lines.next().context("guard exited during start-up")??;
        if l.contains("kernel programs attached") {
            program_ids = program_ids_in(&l);
        }
        if l.contains("guard running") {
            break;
        }
    }
    let last_words = Arc::new(Mutex::new(String::new()));
    let keep = last_words.clone();
    let stderr = std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if l.contains("stopped") {
                if let Ok(mut w) = keep.lock() {
                    *w = l;
                }
            }
        }
    });
    Ok(Guard { child, alerts, program_ids, last_words, stderr: Some(stderr) })
}

/// The ids in the agent's `kernel programs attached programs=[3, 4, …]` log line.
pub(super) fn program_ids_in(line: &str) -> Vec<u32> {
    let Some(list) = line.split("programs=[").nth(1).and_then(|r| r.split(']').next()) else { return vec![] };
    list.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

impl Guard {
    pub(super) fn stop(mut self) -> Result<Totals> {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
        let words = self.last_words.lock().map(|w| w.clone()).unwrap_or_default();
        Totals::parse(&words).with_context(|| format!("the agent's last words had no totals: {words:?}"))
    }

    /// A `VmRSS:`-style line of /proc/PID/status, in KiB.
    pub(super) fn status_kib(&self, key: &str) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub(super) fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most the agent's RSS has been since it started.
    pub(super) fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// CPU time of all the agent's threads, in seconds (schedstat: nanoseconds, not ticks).
    pub(super) fn cpu_s(&self) -> f64 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.child.id())) else { return 0.0 };
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .sum::<f64>()
            / 1e9
    }
}

/// Lost events the alerts announced (`guard.events_lost`, each with its `guard.count`).
pub(super) fn alerted_losses(alerts: &[Value]) -> u64 {
    alerts
        .iter()
        .filter(|a| a["rule"] == "guard.events_lost")
        .filter_map(|a| a["output_fields"]["guard.count"].as_u64())
        .sum()
}

pub(super) fn fs_alerts(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("alerts.json"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
