//! Where alerts go. `stdout` and `file:PATH` write directly; network sinks (`syslog+tcp://`,
//! `syslog+tls://`, `syslog+udp://`, `http(s)://`, `splunk-hec+https://`) spool to disk and
//! deliver at least once (see `net`).

pub mod events;
pub mod file;
pub mod net;
pub mod spool;
pub mod syslog;
pub mod text;

use std::{io::Write, path::Path, sync::Arc};

use anyhow::{Context, Result};
use tokio::{sync::watch, task::JoinHandle};

use crate::{detect::alert::Alert, policy::outputs::OutputSpec, server::metrics::Metrics};

/// Sinks, and the delivery workers of the network ones.
pub type Built = (Vec<Box<dyn Sink>>, Vec<JoinHandle<()>>);

/// The sinks of `specs`, each built from its own spec, and the delivery workers of the network
/// ones (they stop when `stop` turns true, after a last try). Stdout is for people when
/// `text` says so (`Some(colour)`).
pub fn build(
    specs: &[OutputSpec],
    text: Option<bool>,
    spool_dir: &Path,
    spool_max_bytes: u64,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> Result<Built> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut workers = Vec::new();
    for s in specs {
        match s {
            OutputSpec::Stdout => match text {
                Some(color) => sinks.push(Box::new(text::TextSink::new(color))),
                None => sinks.push(Box::new(StdoutSink::new())),
            },
            OutputSpec::File { path, max_bytes, keep } => sinks.push(Box::new(
                file::FileSink::open(path, *max_bytes, *keep)
                    .with_context(|| format!("opening output file {}", path.display()))?,
            )),
            OutputSpec::Net { name, target } => {
                let (sink, worker) =
                    net::start(name, target, spool_dir, spool_max_bytes, metrics.clone(), stop.clone())?;
                sinks.push(sink);
                workers.push(worker);
            }
        }
    }
    for s in &sinks {
        metrics.register_sink(&s.name());
    }
    Ok((sinks, workers))
}

pub trait Sink: Send {
    fn name(&self) -> String;
    fn send(&mut self, alert: &Alert) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

pub struct StdoutSink(events::JsonLines<std::io::Stdout>);

impl StdoutSink {
    pub fn new() -> Self {
        Self(events::JsonLines::new(std::io::stdout()))
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> String {
        "stdout".into()
    }
    fn send(&mut self, alert: &Alert) -> std::io::Result<()> {
        self.0.write(alert)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        std::io::stdout().flush()
    }
}
