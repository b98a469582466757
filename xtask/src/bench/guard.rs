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
    /// From its spawn to its "guard running" (sensors attached, running processes and
    /// notebooks found, ready for events).
    pub(super) ready: Duration,
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
    let spawned = Instant::now();
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
    let ready = spawned.elapsed();
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
    Ok(Guard { child, alerts, program_ids, last_words, stderr: Some(stderr), ready })
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

    /// The alerts the agent has written so far.
    pub(super) fn alerts_so_far(&self) -> Vec<Value> {
        self.alerts.parent().map(fs_alerts).unwrap_or_default()
    }

    /// Where the agent's resident memory is, from its smaps.
    pub(super) fn memory(&self) -> Result<Memory> {
        let smaps = fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).context("reading smaps")?;
        let exe = fs::read_link(format!("/proc/{}/exe", self.child.id())).context("reading exe")?;
        Ok(Memory::of(&smaps, &exe.to_string_lossy()))
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

/// The agent's resident memory by what holds it, KiB.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Memory {
    /// The event ring's mapping: the kernel maps its data pages twice (so a record that wraps
    /// reads contiguously), and both count.
    pub(super) ring: u64,
    /// The agent's own code and constant data, mapped from its binary.
    pub(super) binary: u64,
    /// Other files mapped: libc, libm, libseccomp, the loader.
    pub(super) libraries: u64,
    /// Heap, thread stacks and every other private mapping.
    pub(super) heap: u64,
}

impl Memory {
    pub(super) fn of(smaps: &str, exe: &str) -> Self {
        let mut m = Memory::default();
        let mut name = String::new();
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                name = words.nth(4).unwrap_or("").to_string();
            } else if first == "Rss:" {
                let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match name.as_str() {
                    "anon_inode:bpf-map" => m.ring += kib,
                    n if n == exe => m.binary += kib,
                    n if n.starts_with('/') => m.libraries += kib,
                    _ => m.heap += kib,
                }
            }
        }
        m
    }

    pub(super) fn json(&self) -> Value {
        json!({"ring_kib": self.ring, "binary_kib": self.binary, "libraries_kib": self.libraries, "heap_kib": self.heap})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_split_by_mapping() {
        let smaps = "\
55-56 r-xp 00000000 00:1f 12 /opt/guard
Rss:                 100 kB
7f-80 rw-s 00000000 00:10 9 anon_inode:bpf-map
Rss:                 16 kB
7f1-7f2 r-xp 00000000 00:1f 13 /usr/lib/libc.so.6
Rss:                 8 kB
7f3-7f4 rw-p 00000000 00:00 0
Rss:                 4 kB
7f5-7f6 rw-p 00000000 00:00 0 [heap]
Rss:                 2 kB
";
        let m = Memory::of(smaps, "/opt/guard");
        assert_eq!((m.binary, m.ring, m.libraries, m.heap), (100, 16, 8, 6));
    }
}
