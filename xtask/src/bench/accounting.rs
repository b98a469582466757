//! CPU accounting of a load, beside its throughput ratio: of the CPU time the load kept the
//! machine busy, the share that went to the guard, its kernel programs (BPF run-time
//! statistics) and the agent. It is a share of the same seconds, so this VM's speed changes, which swing
//! whole runs by ±10–25% and leave the throughput ratio's interval wide, barely move it. It
//! leaves out what the kernel spends calling the programs (given as program runs per operation:
//! each costs about what an empty program does, see the recorder section) and any slowdown
//! the guard causes by sharing caches.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{load::load, Guard};

/// Busy CPU time of the machine, in seconds: user, nice, system, irq and softirq of every CPU
/// (idle, iowait and the host's steal are not the storm's).
fn busy_s() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let ticks: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Run time (s) and runs of the given programs so far (statistics must be on).
fn programs(ids: &[u32]) -> Result<(f64, u64)> {
    let mut time = 0.0;
    let mut runs = 0;
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if ids.contains(&info.id()) {
            time += info.run_time().as_secs_f64();
            runs += info.run_count();
        }
    }
    Ok((time, runs))
}

/// What the guard used of the machine's busy CPU while a load ran.
pub struct Share {
    busy_s: f64,
    programs_s: f64,
    program_runs: u64,
    agent_s: f64,
}

/// Accounts for `run` (a load, or a stretch of one) with the guard `g` running.
pub fn measure(g: &Guard, run: impl FnOnce() -> Result<()>) -> Result<Share> {
    let ids = g.program_ids.clone();
    anyhow::ensure!(!ids.is_empty(), "the agent did not log its program ids");
    // Statistics cost every program run two clock reads: on only for this, never in a timed run.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
    let (p0, r0) = programs(&ids)?;
    let (b0, a0) = (busy_s()?, g.cpu_s());
    run()?;
    let (p1, r1) = programs(&ids)?;
    let (b1, a1) = (busy_s()?, g.cpu_s());
    drop(stats);
    Ok(Share { busy_s: b1 - b0, programs_s: p1 - p0, program_runs: r1 - r0, agent_s: a1 - a0 })
}

impl Share {
    /// The result, per operation of the `ops` the load made meanwhile.
    pub fn json(&self, ops: u64) -> Value {
        let per_op = |s: f64| s / ops.max(1) as f64 * 1e6;
        let programs_share = self.programs_s / self.busy_s;
        let agent_share = self.agent_s / self.busy_s;
        let guard_share = programs_share + agent_share;
        json!({
            "ops": ops,
            "cpu_busy_s": self.busy_s,
            "cpu_per_op_us": per_op(self.busy_s),
            "programs_us_per_op": per_op(self.programs_s),
            "agent_us_per_op": per_op(self.agent_s),
            "program_runs_per_op": self.program_runs as f64 / ops.max(1) as f64,
            "programs_share": programs_share,
            "agent_share": agent_share,
            "guard_share": guard_share,
            "ratio_by_accounting": 1.0 - guard_share,
        })
    }
}

/// One accounting of `runs` exec storms of `n` in `cgroup` with the guard `g` running; the
/// agent's work on what they queued is counted for `tail` after them.
pub fn exec_storm(g: &Guard, n: u64, runs: usize, cgroup: Option<&Path>, tail: Duration) -> Result<Value> {
    let share = measure(g, || {
        for _ in 0..runs {
            load("exec", n, 0, cgroup)?;
        }
        std::thread::sleep(tail);
        Ok(())
    })?;
    Ok(share.json(n * runs as u64))
}

/// A table row from a [`Share::json`] result; `op` names the operation (`exec`, `call`).
pub fn row(name: &str, op: &str, a: &Value) -> String {
    let f = |k: &str| a[k].as_f64().unwrap_or(f64::NAN);
    // Sub-microsecond operations (a getppid) need more digits.
    let us = |v: f64| if v < 10.0 { format!("{v:.3} µs") } else { format!("{v:.0} µs") };
    format!(
        "| {name} | {} {op}s | {} | {:.3} µs ({:.2}%) | {:.3} µs ({:.2}%) | {:.2} | **{:.3}** |",
        a["ops"],
        us(f("cpu_per_op_us")),
        f("programs_us_per_op"),
        100.0 * f("programs_share"),
        f("agent_us_per_op"),
        100.0 * f("agent_share"),
        f("program_runs_per_op"),
        f("ratio_by_accounting"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_only_grows() {
        let a = busy_s().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = busy_s().unwrap();
        assert!(a > 0.0 && b >= a, "{a} then {b}");
    }
}
