//! Where events and alerts go. Each sink takes finished, redacted alerts.

pub mod events;
pub mod file;

use std::{io::Write, path::PathBuf};

use crate::detect::alert::Alert;

/// An output as written on the command line or in the policy (`stdout`, `file:PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("unknown output {0:?} (expected stdout or file:PATH)")]
    Unknown(String),
    #[error("output {0:?}: the file path must be absolute")]
    RelativePath(String),
}

impl OutputSpec {
    pub fn parse(s: &str) -> Result<Self, OutputError> {
        if s == "stdout" {
            return Ok(Self::Stdout);
        }
        if let Some(p) = s.strip_prefix("file:") {
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(OutputError::RelativePath(s.to_string()));
            }
            return Ok(Self::File(p));
        }
        Err(OutputError::Unknown(s.to_string()))
    }
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

pub fn open(spec: &OutputSpec) -> std::io::Result<Box<dyn Sink>> {
    Ok(match spec {
        OutputSpec::Stdout => Box::new(StdoutSink::new()),
        OutputSpec::File(p) => Box::new(file::FileSink::open(p)?),
    })
}
