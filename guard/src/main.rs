mod cli;

use std::{io::Write, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Cmd, PolicyCmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // A log pipe that goes away (a dead log shipper, a closed terminal) must not stop the
        // guard: by default tracing reports a failed write with eprintln!, which panics on that
        // same closed stderr and takes the agent down.
        .log_internal_errors(false)
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.cmd {
        Cmd::Run(args) => args.options().and_then(|opts| {
            // The ring reader has a thread of its own (it must never wait on enrichment); the
            // agent's work is one pipeline, on one worker: a second worker only moved the
            // pipeline between threads, at a wake-up each time.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            rt.block_on(async { tokio::spawn(guard::agent::run(opts)).await? })
        }),
        Cmd::Policy(PolicyCmd::Check { file }) => match std::fs::read_to_string(&file)
            .map_err(|e| vec![guard::policy::PolicyError::unreadable(&file, e)])
            .and_then(|text| guard::policy::check::check_all(&file.display().to_string(), &text))
        {
            Ok(p) => {
                println!(
                    "{}: ok (mode {}, {} helpers, {} overrides, {} rules disabled)",
                    file.display(),
                    p.mode,
                    p.helpers.len(),
                    p.overrides.len(),
                    p.rules.disabled.len()
                );
                Ok(())
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                return ExitCode::FAILURE;
            }
        },
        Cmd::Cleanup { pin_dir } => guard::sensors::pins::remove_pins(&pin_dir).map(|n| {
            println!("{}: removed {n} pins", pin_dir.display());
        }),
        Cmd::Status { pin_dir } => guard::discovery::cgroup::find_cgroup2_mount().and_then(|mount| {
            let s = guard::enforce::status::read(&pin_dir, &mount, std::path::Path::new("/proc"))?;
            print!("{}", guard::enforce::status::render(&s));
            Ok(())
        }),
        Cmd::Posture { format } => cli::posture::run(format).map(|_| ()),
        Cmd::Seccomp(cmd) => match cli::seccomp::run(cmd) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code as u8),
            Err(e) => Err(e),
        },
        Cmd::Policy(PolicyCmd::Suggest { files, policy, output }) => {
            cli::suggest(&files, policy.as_deref(), output.as_deref())
        }
        Cmd::Policy(PolicyCmd::Default) => {
            print!("{}", guard::policy::DEFAULT_POLICY);
            Ok(())
        }
        Cmd::Version => {
            let mount = guard::discovery::cgroup::find_cgroup2_mount().ok().map(|p| p.display().to_string());
            let f = guard::sensors::features::Features::detect(mount);
            println!("guard {}", env!("CARGO_PKG_VERSION"));
            println!("kernel {}", f.kernel);
            println!(
                "btf {}",
                if f.btf {
                    "yes (/sys/kernel/btf/vmlinux): struct offsets resolved at start-up"
                } else {
                    "NO: the guard cannot run"
                }
            );
            println!("ring buffer {}", if f.ring_buffer { "yes" } else { "no" });
            println!("cgroup v2 {}", f.cgroup2_mount.as_deref().unwrap_or("NOT MOUNTED"));
            println!(
                "tracefs {}",
                if f.tracefs {
                    "yes"
                } else {
                    "no: packet/raw sockets only through a kprobe or the cap_capable tracepoint"
                }
            );
            println!(
                "bpf lsm {}; fentry/LSM programs are not used (raw tracepoints and cgroup hooks only)",
                if f.bpf_lsm_listed { "listed" } else { "not listed" }
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: with stderr gone it would panic instead of exiting 1.
            let _ = writeln!(std::io::stderr(), "guard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
