//! Command-line interface.

pub mod posture;
pub mod seccomp;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use anyhow::{Context, Result};
use guard::{
    agent::RunOptions,
    policy::outputs::OutputSpec,
    policy::{watch::PolicyFile, Mode, Policy},
    sensors::process::SensorOptions,
};

#[derive(Parser)]
#[command(
    name = "guard",
    version,
    about = "notebook-guard: runtime syscall guard for JupyterHub notebook nodes",
    long_about = "notebook-guard watches notebook containers for exec of non-Python processes and \
                  unexpected egress, from eBPF programs in the kernel. Needs root (or CAP_BPF, \
                  CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_RESOURCE, CAP_DAC_READ_SEARCH, \
                  CAP_SYS_PTRACE, and CAP_SYS_ADMIN for the writers of persistence files) and a \
                  kernel with BTF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Load the sensors and watch the node.
    #[command(verbatim_doc_comment)]
    ///
    /// Examples:
    ///   guard run                                  # alerts: lines for people on a terminal, JSON into pipes
    ///   guard run --mode enforce --config policy.yaml
    ///   guard run --events                         # and every exec on the node
    ///   guard run --events --watch-cgroup /sys/fs/cgroup/kubepods.slice
    ///   guard run --output file:/var/log/notebook-guard.json --listen 127.0.0.1:9402
    Run(RunArgs),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Remove pinned programs and maps (ends enforcement left running by a stopped agent).
    ///
    /// Example: guard cleanup --pin-dir /sys/fs/bpf/notebook-guard
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/notebook-guard")]
        pin_dir: PathBuf,
    },
    /// What stays enforced: the notebooks the pinned programs enforce (by user, pod or unit),
    /// LocalProcessSpawner scopes, and whether an agent is running.
    Status {
        #[arg(long, default_value = "/sys/fs/bpf/notebook-guard")]
        pin_dir: PathBuf,
    },
    /// The posture findings of every notebook on this node (clear-text kernel transport, a
    /// readable connection file, root, a service-account token, no seccomp, NoNewPrivs unset),
    /// each with its fix.
    ///
    /// Example: guard posture --format json
    Posture {
        #[arg(long, value_enum, default_value = "text")]
        format: posture::PostureFormat,
    },
    /// Seccomp profiles from observed behaviour: record, merge, generate, check, diff.
    #[command(subcommand)]
    Seccomp(seccomp::SeccompCmd),
    /// Print version and build information.
    Version,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file: exit 0, or print FILE:LINE:COLUMN: KEY: error and exit 1.
    ///
    /// Example: guard policy check /etc/notebook-guard/policy.yaml
    Check { file: PathBuf },
    /// Print the embedded default policy.
    Default,
    /// Propose helper allowances from the alerts of a monitoring period (JSON lines, files or
    /// stdin): program and place, parent, argument shapes, counts and users, as a `helpers:`
    /// section that `guard policy check` accepts. Never applied by itself.
    #[command(verbatim_doc_comment)]
    ///
    /// Examples:
    ///   guard policy suggest /var/log/notebook-guard/alerts.json -o suggested.yaml
    ///   kubectl logs ds/notebook-guard | guard policy suggest --policy policy.yaml
    Suggest {
        /// Alert files (JSON lines); none or `-`: standard input.
        files: Vec<PathBuf>,
        /// The policy in force, whose helpers are kept (default: the embedded one).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "monitor" => Ok(Mode::Monitor),
        "enforce" => Ok(Mode::Enforce),
        _ => Err(format!("{s:?} is not a mode (monitor or enforce)")),
    }
}

fn parse_output(s: &str) -> Result<OutputSpec, String> {
    OutputSpec::parse(s).map_err(|e| e.to_string())
}

/// `guard run --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Auto,
    Text,
    Json,
}

#[derive(Args)]
pub struct RunArgs {
    /// Policy file (policy, discovery, outputs). Default: the embedded policy.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// monitor or enforce: wins over every mode in the policy.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Where alerts go: stdout, file:PATH, syslog+tcp|tls|udp://HOST:PORT, http(s)://URL,
    /// splunk-hec+https://HOST:PORT?token_env=VAR. Repeatable; adds to the policy's outputs.
    #[arg(long = "output", value_name = "OUTPUT", value_parser = parse_output)]
    pub output: Vec<OutputSpec>,
    /// Also print every exec event on stdout (raw sensor feed), next to the alerts. Without
    /// --watch-cgroup this watches the whole node.
    #[arg(long)]
    pub events: bool,
    /// What stdout looks like: text (one short line per alert, coloured on a terminal), json
    /// (Falco JSON lines), or auto: text on a terminal, json into files and pipes.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Serve /healthz, /readyz and /metrics on this address (e.g. 0.0.0.0:9402).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Where network outputs spool alerts until delivered (survives restarts).
    #[arg(long, default_value = "/var/lib/notebook-guard/spool")]
    pub spool_dir: PathBuf,
    /// Cap of each network output's spool; past it the oldest alerts are dropped and counted.
    #[arg(long, default_value_t = 64 << 20)]
    pub spool_max_bytes: u64,
    /// bpffs directory for pinned programs and maps: enforcement keeps running across an agent
    /// restart or upgrade, and the next agent adopts it.
    #[arg(long, default_value = "/sys/fs/bpf/notebook-guard")]
    pub pin_dir: PathBuf,
    /// Do not pin: everything is detached when the agent stops. The default when stdout is a
    /// terminal (an interactive run: ^C ends enforcement).
    #[arg(long, conflicts_with = "pin")]
    pub no_pin: bool,
    /// Pin even in an interactive run (the default otherwise, as in the DaemonSet).
    #[arg(long)]
    pub pin: bool,
    /// Do not attach the egress hooks (connect/sendmsg policy, packet sockets).
    #[arg(long)]
    pub no_egress: bool,
    /// Watch every cgroup on the node, not only notebook cgroups.
    #[arg(long)]
    pub watch_all: bool,
    /// Report only processes in this cgroup or below it (path, absolute or relative to the
    /// cgroup2 mount). Repeatable. Default: the whole node.
    #[arg(long = "watch-cgroup", value_name = "PATH")]
    pub watch_cgroup: Vec<PathBuf>,
    /// Kernel ring buffer size in bytes (power of two). The agent maps its data twice, so it
    /// counts twice in the agent's RSS; 4 MiB holds this machine's fastest exec storm with
    /// room to spare (BENCHMARKS.md, Loss).
    #[arg(long, default_value_t = 4 << 20)]
    pub ring_bytes: u32,
    /// Bytes waiting in the ring before the kernel wakes the agent (0: wake per event).
    #[arg(long, default_value_t = 256 << 10)]
    pub wakeup_bytes: u64,
    /// While records flow, how often the agent drains the ring, in milliseconds (it backs off
    /// to 50× this, at most a second, while they keep coming; sparse records wake it instead).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,
    /// Kernel BTF used to find struct offsets.
    #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,
    /// Capacity of a kernel map, NAME=ENTRIES (repeatable): cgroups, marks, servers, allowed,
    /// incarnations, scopes, egress-rules, egress-names, dns-answers, kernel-commands, launchers.
    /// A full map is alerted (`guard.error`) and the agent keeps running; a pinned map of
    /// another size is made anew.
    #[arg(long = "map-size", value_name = "NAME=ENTRIES")]
    pub map_size: Vec<String>,
}

impl RunArgs {
    pub fn options(&self) -> Result<RunOptions> {
        // The file's version is noted before it is read: a change from then on is reloaded.
        let mut config = self.config.as_deref().map(PolicyFile::new);
        let policy = match config.as_mut() {
            Some(f) => f.load_now().context("loading the policy")?,
            None => Policy::default_policy(),
        };
        Ok(RunOptions {
            sensor: SensorOptions {
                ring_bytes: self.ring_bytes,
                wakeup_bytes: self.wakeup_bytes,
                watch_all: self.watch_all || (self.events && self.watch_cgroup.is_empty()),
                btf_path: self.btf.clone(),
                map_sizes: {
                    let mut sizes = guard::sensors::maps::MapSizes::default();
                    for s in &self.map_size {
                        sizes.add(s)?;
                    }
                    sizes
                },
                pin_dir: {
                    use std::io::IsTerminal;
                    let interactive = std::io::stdout().is_terminal();
                    (self.pin || !(self.no_pin || interactive)).then(|| self.pin_dir.clone())
                },
            },
            events_json: self.events,
            text: {
                use std::io::IsTerminal;
                let tty = std::io::stdout().is_terminal();
                match self.format {
                    Format::Text => Some(tty),
                    Format::Json => None,
                    Format::Auto => tty.then_some(true),
                }
            },
            watch_cgroups: self.watch_cgroup.clone(),
            poll: Duration::from_millis(self.poll_ms),
            policy,
            mode_flag: self.mode,
            outputs: self.output.clone(),
            listen: self.listen,
            config,
            egress: !self.no_egress,
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            ..RunOptions::default()
        })
    }
}

/// `guard policy suggest`.
pub fn suggest(files: &[PathBuf], policy: Option<&std::path::Path>, output: Option<&std::path::Path>) -> Result<()> {
    use std::io::Read;
    let current = match policy {
        Some(p) => Policy::from_path(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Policy::default_policy(),
    };
    let mut alerts = String::new();
    if files.is_empty() || files.iter().any(|f| f.as_os_str() == "-") {
        std::io::stdin().read_to_string(&mut alerts).context("reading alerts from standard input")?;
    }
    for f in files.iter().filter(|f| f.as_os_str() != "-") {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        // Each file's errors name the file.
        guard::policy::suggest::suggest(&text, &[]).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        alerts.push_str(&text);
        alerts.push('\n');
    }
    let text = guard::policy::suggest::suggest(&alerts, &current.helpers).map_err(|e| anyhow::anyhow!("{e}"))?;
    match output {
        Some(o) => std::fs::write(o, text).with_context(|| format!("writing {}", o.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
