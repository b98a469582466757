//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use guard::{agent::RunOptions, sensors::process::SensorOptions};

#[derive(Parser)]
#[command(
    name = "guard",
    version,
    about = "notebook-guard: runtime syscall guard for JupyterHub notebook nodes",
    long_about = "notebook-guard watches notebook containers for exec of non-Python processes and \
                  unexpected egress, from eBPF programs in the kernel. Needs root (or CAP_BPF, \
                  CAP_PERFMON, CAP_SYS_RESOURCE, CAP_DAC_READ_SEARCH) and a kernel with BTF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Load the sensors and watch the node.
    ///
    /// Examples:
    ///   guard run                       # every exec on the node, as log lines
    ///   guard run --events              # every exec as one JSON object per line
    ///   guard run --events --watch-cgroup /sys/fs/cgroup/kubepods.slice
    Run(RunArgs),
    /// Print version and build information.
    Version,
}

#[derive(Args)]
pub struct RunArgs {
    /// Print every exec event as one JSON object per line on stdout.
    #[arg(long)]
    pub events: bool,
    /// Report only processes in this cgroup or below it (path, absolute or relative to the
    /// cgroup2 mount). Repeatable. Default: the whole node.
    #[arg(long = "watch-cgroup", value_name = "PATH")]
    pub watch_cgroup: Vec<PathBuf>,
    /// Kernel ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = 8 << 20)]
    pub ring_bytes: u32,
    /// Bytes waiting in the ring before the kernel wakes the agent (0: wake per event).
    #[arg(long, default_value_t = 256 << 10)]
    pub wakeup_bytes: u64,
    /// How often the agent drains the ring when not woken, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,
    /// Kernel BTF used to find struct offsets.
    #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,
}

impl RunArgs {
    pub fn options(&self) -> RunOptions {
        RunOptions {
            sensor: SensorOptions {
                ring_bytes: self.ring_bytes,
                wakeup_bytes: self.wakeup_bytes,
                watch_all: self.watch_cgroup.is_empty(),
                btf_path: self.btf.clone(),
            },
            events_json: self.events,
            watch_cgroups: self.watch_cgroup.clone(),
            poll: Duration::from_millis(self.poll_ms),
            ..RunOptions::default()
        }
    }
}
