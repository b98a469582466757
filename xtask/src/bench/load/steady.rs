//! The parent's side of a steady load: the load runs for a whole scenario and prints every
//! chunk it timed; windows of that time (guard off, guard on, a peer…) are compared.

use std::{
    io::Read,
    path::Path,
    process::{Child, ChildStdin, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{in_cgroup, load_command, monotonic_ns};

/// A span of time during which one configuration (guard off, guard on, a peer…) was in place.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    start: u64,
    end: u64,
}

/// A steady load's view of one window.
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    /// ns per operation over the fastest FASTEST_SHARE of the window's chunks: a preemption,
    /// a host steal or a timer tick spoils the chunk it lands in, not the comparison, while
    /// what the guard adds to every operation is in every chunk.
    pub fastest: f64,
    /// ns per operation over all of the window's chunks, noise included: for a load whose cost
    /// includes work done beside it in bursts (the agent's drains), which only some chunks hold.
    pub all: f64,
    /// The window's median time of the reference work timed after each chunk (loads that do
    /// one: the exec storm), in ns: how fast this VM ran kernel work the guard has no part in.
    pub reference: Option<f64>,
    /// For loads with reference work: each thread's ns per operation over all its chunks
    /// (every drain of the agent's is in it) over its mean reference time, their geometric
    /// mean over threads. Each thread is pinned to one CPU, and this VM's CPUs change speed
    /// apart from each other, so each is corrected by its own. Means, not medians: without a
    /// guard, 2 s windows 2.5-4 s apart differed by 3.1-3.7% (sd) this way, by 3.6-4.4% with
    /// each thread's median chunk over its median reference.
    pub normalized: Option<f64>,
}

const FASTEST_SHARE: f64 = 0.1;

/// A steady load running for the whole of a scenario.
pub struct SteadyLoad {
    child: Child,
    stdin: Option<ChildStdin>,
    chunk: u64,
}

impl SteadyLoad {
    /// Starts `kind` (`connect`, `null`, `exec`) in `cgroup` (None: where we are), timing
    /// chunks of `chunk` operations.
    pub fn start(kind: &str, chunk: u64, cgroup: Option<&Path>) -> Result<Self> {
        let mut cmd = load_command(kind, chunk, 0)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let _procs = cgroup.map(|cg| in_cgroup(&mut cmd, cg)).transpose()?;
        let mut child = cmd.spawn().with_context(|| format!("starting bench-load {kind}"))?;
        let stdin = child.stdin.take();
        // Its first chunks run with cold caches.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child, stdin, chunk })
    }

    /// Lets the load run for `d` and returns that window.
    pub fn window(&self, d: Duration) -> Window {
        let start = monotonic_ns();
        std::thread::sleep(d);
        Window { start, end: monotonic_ns() }
    }

    /// Stops the load and returns its chunks.
    pub fn finish(mut self) -> Result<Chunks> {
        drop(self.stdin.take());
        let mut out = String::new();
        self.child.stdout.take().context("load stdout")?.read_to_string(&mut out)?;
        if !self.child.wait()?.success() {
            bail!("steady bench-load failed");
        }
        Chunks::parse(self.chunk, &out)
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        // On an error path: do not leave the load spinning on a core.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every chunk a steady load timed: (start, end) in CLOCK_MONOTONIC ns.
pub struct Chunks {
    chunk: u64,
    spans: Vec<(u64, u64)>,
    /// Per span, the ns its reference work took and the thread that timed it (empty for a
    /// load without reference work).
    reference: Vec<(u64, u32)>,
}

/// Chunks a thread must have in a window for its own means.
const MIN_THREAD_CHUNKS: usize = 5;

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Chunks {
    /// A load's output: one line per chunk, its start and end, and for a load with reference
    /// work that work's ns and the timing thread's index. All lines have the same shape.
    fn parse(chunk: u64, out: &str) -> Result<Self> {
        let mut c = Chunks { chunk, spans: Vec::new(), reference: Vec::new() };
        for l in out.lines() {
            let w = l.split_whitespace().map(str::parse::<u64>).collect::<Result<Vec<_>, _>>();
            match w.as_deref() {
                Ok(&[a, b]) if c.reference.is_empty() => c.spans.push((a, b)),
                Ok(&[a, b, r, t]) if c.reference.len() == c.spans.len() && t < 64 => {
                    c.spans.push((a, b));
                    c.reference.push((r, t as u32));
                }
                _ => bail!("bench-load printed {l:?}, not a chunk's start and end (and its reference work and thread)"),
            }
        }
        Ok(c)
    }

    /// ns per operation in `w`, from the chunks wholly inside it.
    pub fn in_window(&self, w: Window) -> Result<Steady> {
        let inside: Vec<usize> =
            (0..self.spans.len()).filter(|&i| self.spans[i].0 >= w.start && self.spans[i].1 <= w.end).collect();
        if inside.len() < 10 {
            bail!("only {} chunks in a {} ms window: the load stalled", inside.len(), (w.end - w.start) / 1_000_000);
        }
        let per_op = |i: usize| (self.spans[i].1 - self.spans[i].0) as f64 / self.chunk as f64;
        let mut ns: Vec<f64> = inside.iter().map(|&i| per_op(i)).collect();
        let all = ns.iter().sum::<f64>() / ns.len() as f64;
        ns.sort_by(f64::total_cmp);
        let fastest = &ns[..(ns.len() as f64 * FASTEST_SHARE).ceil() as usize];
        let (mut reference, mut normalized) = (None, None);
        if !self.reference.is_empty() {
            reference = Some(median_of(inside.iter().map(|&i| self.reference[i].0 as f64).collect()));
            let mut threads: Vec<u32> = inside.iter().map(|&i| self.reference[i].1).collect();
            threads.sort_unstable();
            threads.dedup();
            let mut log_sum = 0.0;
            for &t in &threads {
                let mine: Vec<usize> = inside.iter().copied().filter(|&i| self.reference[i].1 == t).collect();
                if mine.len() < MIN_THREAD_CHUNKS {
                    bail!(
                        "thread {t} timed only {} chunks in a {} ms window",
                        mine.len(),
                        (w.end - w.start) / 1_000_000
                    );
                }
                let exec = mine.iter().map(|&i| per_op(i)).sum::<f64>() / mine.len() as f64;
                let work = mine.iter().map(|&i| self.reference[i].0 as f64).sum::<f64>() / mine.len() as f64;
                log_sum += (exec / work).ln();
            }
            normalized = Some((log_sum / threads.len() as f64).exp());
        }
        Ok(Steady { fastest: fastest.iter().sum::<f64>() / fastest.len() as f64, all, reference, normalized })
    }

    /// Operations made in `w` (by the chunks wholly inside it).
    pub fn ops_in(&self, w: Window) -> u64 {
        self.spans.iter().filter(|&&(a, b)| a >= w.start && b <= w.end).count() as u64 * self.chunk
    }

    /// [`Chunks::in_window`]`.fastest` of each window.
    pub fn fastest_in(&self, windows: &[Window]) -> Result<Vec<f64>> {
        windows.iter().map(|&w| Ok(self.in_window(w)?.fastest)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_its_own_chunks_and_its_fastest_tenth() {
        // Chunks of 10 ops; 20 chunks inside the window at 10..=29 ns/op, one straddling it.
        let mut spans: Vec<(u64, u64)> =
            (0..20u64).map(|i| (1000 + i * 1000, 1000 + i * 1000 + (10 + i) * 10)).collect();
        spans.push((900, 1500));
        let c = Chunks { chunk: 10, spans, reference: Vec::new() };
        let s = c.in_window(Window { start: 1000, end: 30_000 }).unwrap();
        assert_eq!(s.fastest, 10.5); // the fastest two of twenty: 10 and 11
        assert_eq!(s.all, 19.5);
        assert_eq!(s.reference, None);

        assert!(c.in_window(Window { start: 0, end: 2000 }).is_err());
    }

    #[test]
    fn a_window_reads_its_chunks_reference_work() {
        // Ten chunks inside the window with reference work 100..=1000 ns, and one outside it.
        let out: String =
            (0..11u64).map(|i| format!("{} {} {} 0\n", 1000 * i, 1000 * i + 500, 100 * (i + 1))).collect();
        let c = Chunks::parse(10, &out).unwrap();
        let s = c.in_window(Window { start: 0, end: 10_000 }).unwrap();
        // The sixth of ten: the median's rule above.
        assert_eq!(s.reference, Some(600.0));
        // One thread: 50 ns/op over a mean 550 ns (a geometric mean of one, so not bit-exact).
        assert!((s.normalized.unwrap() - 50.0 / 550.0).abs() < 1e-12, "{:?}", s.normalized);

        // Lines of several shapes, or other text, are a broken load.
        assert!(Chunks::parse(10, "1 2 3 0\n4 5\n").is_err());
        assert!(Chunks::parse(10, "1 2\n4 5 6 1\n").is_err());
        assert!(Chunks::parse(10, "1 2 3\n").is_err());
        assert!(Chunks::parse(10, "1 x\n").is_err());
    }

    #[test]
    fn each_thread_is_corrected_by_its_own_reference_work() {
        // Thread 0 runs at 10 ns/op with 100 ns of reference work, thread 1 at 40 ns/op with
        // 100 ns: speeds (0.1, 0.4), geometric mean 0.2. Their pooled medians would say 0.4.
        let mut out = String::new();
        for i in 0..6u64 {
            out.push_str(&format!("{} {} 100 0\n", 1000 * i, 1000 * i + 100));
            out.push_str(&format!("{} {} 100 1\n", 1000 * i, 1000 * i + 400));
        }
        let c = Chunks::parse(10, &out).unwrap();
        let s = c.in_window(Window { start: 0, end: 10_000 }).unwrap();
        assert!((s.normalized.unwrap() - 0.2).abs() < 1e-12, "{:?}", s.normalized);

        // A thread with too few chunks of its own in the window has no mean to speak of.
        out.push_str("7000 7100 100 2\n");
        let c = Chunks::parse(10, &out).unwrap();
        assert!(c.in_window(Window { start: 0, end: 10_000 }).is_err());
    }
}
