//! The file sensor's cost to a notebook's own file I/O: persistence directories are watched
//! with fanotify directory marks (the home is one); executables made are seen by the kernel
//! hook every inode change passes. Writes in the home itself (each one an event the agent
//! reads), large files (every page an inode change) and chmods (an executable changed) are
//! the worst cases; small writes below the home are what notebooks mostly do.

use super::*;

/// File operations per timed chunk (a few ms each here).
const FILE_CHUNK: u64 = 200;
const BIG_CHUNK: u64 = 10;
const CHMOD_CHUNK: u64 = 1000;
const FILE_ROUNDS: usize = 25;

/// A stand-in notebook server in the notebook's cgroup (a Python process named like
/// `jupyter-server`, with its home), so the agent watches that home as a real server's.
struct Server(Child);

impl Server {
    fn start(c: &Ctx, home: &Path) -> Result<Self> {
        let script = c.dir.join("files-bench/jupyter-server");
        fs::create_dir_all(script.parent().context("script dir")?)?;
        fs::write(&script, "import time\ntime.sleep(1e6)\n")?;
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script).env("HOME", home).stdin(Stdio::null());
        let _procs = in_cgroup(&mut cmd, &c.nb)?;
        Ok(Self(cmd.spawn().context("starting the stand-in server")?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn files(c: &mut Ctx) -> Result<()> {
    let home = c.dir.join("files-bench/home");
    let _ = fs::remove_dir_all(&home);
    fs::create_dir_all(home.join("work"))?;
    fs::create_dir_all(home.join(".ipython/profile_default/startup"))?;
    fs::write(home.join("tool"), "#!/bin/sh\n")?;
    let _server = Server::start(c, &home)?;
    let per_op = |ns: f64| 1e9 / ns;
    let tool = home.join("tool");
    let nb = Some(c.nb.as_path());
    let scenarios = [
        ("file writes in the home (a watched directory)", format!("files:{}", home.display()), FILE_CHUNK, nb),
        ("file writes below the home (not watched)", format!("files:{}", home.join("work").display()), FILE_CHUNK, nb),
        ("1 MiB files written below the home", format!("bigfile:{}", home.join("work").display()), BIG_CHUNK, nb),
        ("chmod in the home", format!("chmod:{}", tool.display()), CHMOD_CHUNK, nb),
        ("chmod in the home, outside notebooks", format!("chmod:{}", tool.display()), CHMOD_CHUNK, None),
    ];
    let mut rows = Vec::new();
    let mut json = Map::new();
    for (name, kind, chunk, cgroup) in scenarios {
        let (o, accounting) = steady_overhead_in(c, &kind, chunk, c.rounds(FILE_ROUNDS), per_op, cgroup)?;
        let (lo, hi) = min_max(&o.ratios);
        eprintln!("bench: {name}: ratio {:.3} ({lo:.3}–{hi:.3})", median(&o.ratios));
        rows.push(o.row(name, "ops/s"));
        let mut v = o.json("ops/s");
        v["cpu_accounting"] = accounting;
        json.insert(name.into(), v);
    }
    c.results.insert("files".into(), json.into());
    c.md.push(prose::render(
        prose::FILES,
        &[
            ("rounds", c.rounds(FILE_ROUNDS).to_string()),
            ("file_chunk", FILE_CHUNK.to_string()),
            ("big_chunk", BIG_CHUNK.to_string()),
            ("chmod_chunk", CHMOD_CHUNK.to_string()),
            ("window_s", WINDOW.as_secs_f64().to_string()),
            ("rows", rows.join("\n")),
        ],
    )?);
    Ok(())
}
