mod cli;

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Cmd};

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Run(args) => {
            // Two cores per node: one worker thread for the pipeline is plenty, and the ring
            // reader never waits on it.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(guard::agent::run(args.options()))
        }
        Cmd::Version => {
            println!("guard {}", env!("CARGO_PKG_VERSION"));
            println!(
                "kernel {}",
                nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            Ok(())
        }
    }
}
