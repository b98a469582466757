//! `file:PATH`: alerts appended as JSON lines (one write per line, so a tailer such as Fluent
//! Bit never sees half a record).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::Sink;
use crate::detect::alert::Alert;

pub struct FileSink {
    path: PathBuf,
    file: File,
    line: Vec<u8>,
}

impl FileSink {
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file, line: Vec::with_capacity(4096) })
    }
}

impl Sink for FileSink {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn send(&mut self, alert: &Alert) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, alert)?;
        self.line.push(b'\n');
        // O_APPEND + one write: the line lands whole.
        self.file.write_all(&self.line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
