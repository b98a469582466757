mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Cmd, PolicyCmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.cmd {
        Cmd::Run(args) => args.options().and_then(|opts| {
            // Two cores per node: two workers; the ring reader never waits on the pipeline.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(guard::agent::run(opts))
        }),
        Cmd::Policy(PolicyCmd::Check { file }) => match guard::policy::Policy::from_path(&file) {
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
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        Cmd::Policy(PolicyCmd::Default) => {
            print!("{}", guard::policy::DEFAULT_POLICY);
            Ok(())
        }
        Cmd::Version => {
            println!("guard {}", env!("CARGO_PKG_VERSION"));
            println!(
                "kernel {}",
                nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
