//! `file:PATH`: alerts appended as JSON lines, one write per line (a tailer such as Fluent Bit
//! never sees half a record), rotated by size the way logrotate does (rename, then a new file),
//! keeping `keep` old files.

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
    len: u64,
    max_bytes: u64,
    keep: u32,
    line: Vec<u8>,
}

impl FileSink {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), file, len, max_bytes, keep, line: Vec::with_capacity(4096) })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.len = 0;
        Ok(())
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
        if self.len > 0 && self.len + self.line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        // O_APPEND + one write: the line lands whole.
        self.file.write_all(&self.line)?;
        self.len += self.line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::alert::Action, policy::rules::NON_PYTHON_EXEC};

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("guard-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("alerts.json");
        let mut s = FileSink::open(&path, 2000, 2).unwrap();
        let mut a = Alert::new(&NON_PYTHON_EXEC, "t".into(), "h", Action::Alert);
        a.set("proc.cmdline", "x".repeat(300));
        for _ in 0..30 {
            s.send(&a).unwrap();
        }
        let lines = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
        assert!(path.exists() && dir.join("alerts.json.1").exists() && dir.join("alerts.json.2").exists());
        assert!(!dir.join("alerts.json.3").exists(), "only `keep` old files");
        for p in [path.clone(), dir.join("alerts.json.1"), dir.join("alerts.json.2")] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 2000);
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
            }
            assert!(lines(&p) > 0);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
