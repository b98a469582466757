//! File loads, for the file sensor's cost: what a notebook does to files, on one CPU, in
//! chunks (`run_steady`).

use std::{fs, io::Write, os::unix::fs::PermissionsExt, path::PathBuf};

use anyhow::Result;

use super::run_steady;

/// Bytes of a large file (`bigfile:`), written in pieces of `PIECE`: a notebook saving a
/// model or a dataset shard, each page of it new in the page cache.
const BIG: usize = 1 << 20;
const PIECE: usize = 64 << 10;

/// True for a kind this module runs.
pub(super) fn is(kind: &str) -> bool {
    ["files:", "bigfile:", "chmod:"].iter().any(|p| kind.starts_with(p))
}

pub(super) fn run(kind: &str, n: u64) -> Result<()> {
    let (what, arg) = kind.split_once(':').unwrap_or((kind, ""));
    let path = PathBuf::from(arg);
    let mut i = 0u64;
    match what {
        // A small file created, written, closed and removed in a directory: `files:DIR`.
        "files" => {
            let data = [7u8; 4096];
            run_steady(n, || {
                let p = path.join(format!("bench-{}", i % 16));
                i += 1;
                fs::write(&p, data)?;
                fs::remove_file(&p)?;
                Ok(())
            })
        }
        // A large file written, closed and removed: `bigfile:DIR`.
        "bigfile" => {
            let piece = vec![7u8; PIECE];
            run_steady(n, || {
                let p = path.join(format!("big-{}", i % 4));
                i += 1;
                let mut f = fs::File::create(&p)?;
                for _ in 0..BIG / PIECE {
                    f.write_all(&piece)?;
                }
                drop(f);
                fs::remove_file(&p)?;
                Ok(())
            })
        }
        // A file's mode switched between 0755 and 0644: `chmod:FILE`.
        _ => run_steady(n, || {
            i += 1;
            let mode = if i.is_multiple_of(2) { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            Ok(())
        }),
    }
}
