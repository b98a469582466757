//! A disk spool per network sink: alerts are appended before delivery and removed only once
//! delivered, so they survive a slow or absent receiver and an agent restart. Segment files of
//! JSON lines plus a cursor; bounded in bytes — past the cap the oldest undelivered segment is
//! dropped and its alerts counted as lost (never silently).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

const SEGMENT_BYTES: u64 = 1 << 20;

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Segment being appended to.
    write_seg: u64,
    writer: File,
    write_len: u64,
    /// Next record to deliver.
    cursor: Position,
    /// Records dropped to respect the cap, not yet reported.
    pub lost: u64,
}

/// A place in the spool: (segment, byte offset).
pub type Position = (u64, u64);

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.jsonl"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".jsonl")?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let segs = segments(dir)?;
        let cursor = fs::read_to_string(dir.join("cursor"))
            .ok()
            .and_then(|c| {
                let (a, b) = c.trim().split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .unwrap_or((segs.first().copied().unwrap_or(0), 0));
        let write_seg = segs.last().copied().unwrap_or(cursor.0);
        let writer = OpenOptions::new().create(true).append(true).open(seg_path(dir, write_seg))?;
        let write_len = writer.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(SEGMENT_BYTES),
            write_seg,
            writer,
            write_len,
            cursor,
            lost: 0,
        })
    }

    /// Appends one record (a JSON line without its newline).
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if self.write_len >= SEGMENT_BYTES {
            self.write_seg += 1;
            self.writer = OpenOptions::new().create(true).append(true).open(seg_path(&self.dir, self.write_seg))?;
            self.write_len = 0;
            self.enforce_cap()?;
        }
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record);
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.write_len += line.len() as u64;
        Ok(())
    }

    /// Makes appended records durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.sync_data()
    }

    /// Drops whole undelivered segments, oldest first, while over the cap.
    fn enforce_cap(&mut self) -> io::Result<()> {
        loop {
            let segs = segments(&self.dir)?;
            let total: u64 =
                segs.iter().filter_map(|s| fs::metadata(seg_path(&self.dir, *s)).ok()).map(|m| m.len()).sum();
            if total <= self.max_bytes || segs.len() <= 1 {
                return Ok(());
            }
            let oldest = segs[0];
            let path = seg_path(&self.dir, oldest);
            let content = fs::read(&path)?;
            let skip = if self.cursor.0 == oldest { self.cursor.1 as usize } else { 0 };
            self.lost += content.get(skip..).unwrap_or(&[]).iter().filter(|b| **b == b'\n').count() as u64;
            fs::remove_file(&path)?;
            if self.cursor.0 <= oldest {
                self.cursor = (segs[1], 0);
                self.save_cursor()?;
            }
        }
    }

    /// Up to `max` undelivered records from the cursor, each with the cursor after it.
    pub fn peek(&mut self, max: usize) -> io::Result<Vec<(Vec<u8>, Position)>> {
        let mut out = Vec::new();
        let (mut seg, mut off) = self.cursor;
        while out.len() < max && seg <= self.write_seg {
            let Ok(mut f) = File::open(seg_path(&self.dir, seg)) else {
                seg += 1;
                off = 0;
                continue;
            };
            f.seek(SeekFrom::Start(off))?;
            let mut r = BufReader::new(f);
            loop {
                if out.len() >= max {
                    break;
                }
                let mut line = Vec::new();
                let n = r.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break; // end, or a record still being written
                }
                off += n as u64;
                line.pop();
                out.push((line, (seg, off)));
            }
            if out.len() >= max || seg == self.write_seg {
                break;
            }
            seg += 1;
            off = 0;
        }
        Ok(out)
    }

    /// Marks everything before `pos` delivered.
    pub fn commit(&mut self, pos: Position) -> io::Result<()> {
        for s in segments(&self.dir)? {
            if s < pos.0 {
                let _ = fs::remove_file(seg_path(&self.dir, s));
            }
        }
        self.cursor = pos;
        self.save_cursor()
    }

    fn save_cursor(&self) -> io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, format!("{} {}\n", self.cursor.0, self.cursor.1))?;
        fs::rename(tmp, self.dir.join("cursor"))
    }

    /// Bytes not yet delivered (approximate: whole segments from the cursor).
    pub fn pending_bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter(|s| **s >= self.cursor.0)
            .filter_map(|s| fs::metadata(seg_path(&self.dir, *s)).ok())
            .map(|m| m.len())
            .sum::<u64>()
            .saturating_sub(self.cursor.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("guard-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_survive_reopen_until_committed() {
        let d = dir("reopen");
        let mut s = Spool::open(&d, 8 << 20).unwrap();
        for i in 0..5 {
            s.append(format!("{{\"n\":{i}}}").as_bytes()).unwrap();
        }
        let got = s.peek(2).unwrap();
        assert_eq!(got.len(), 2);
        s.commit(got[1].1).unwrap();
        drop(s);
        let mut s = Spool::open(&d, 8 << 20).unwrap();
        let rest: Vec<String> = s.peek(10).unwrap().into_iter().map(|(r, _)| String::from_utf8(r).unwrap()).collect();
        assert_eq!(rest, vec!["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn over_the_cap_the_oldest_are_dropped_and_counted() {
        let d = dir("cap");
        let mut s = Spool::open(&d, 2 * SEGMENT_BYTES).unwrap();
        let rec = vec![b'x'; 1000];
        let n = 4 * SEGMENT_BYTES as usize / 1001 + 10;
        for _ in 0..n {
            s.append(&rec).unwrap();
        }
        assert!(s.lost > 0, "nothing dropped");
        let kept = s.peek(usize::MAX).unwrap().len() as u64;
        assert_eq!(kept + s.lost, n as u64, "every record is delivered or counted lost");
        let _ = fs::remove_dir_all(&d);
    }
}
