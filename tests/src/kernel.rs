//! Real IPython kernels driven cell by cell (`py/run_cells.py`).

use crate::*;

/// The venv Python with ipykernel and jupyter_client (made by `cargo xtask test`).
pub fn test_python() -> PathBuf {
    std::env::var_os("GUARD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"))
}

/// Outcome of one cell.
#[derive(Debug, serde::Deserialize)]
pub struct CellResult {
    pub cell: usize,
    pub status: String,
    /// The cell's own output (stdout and stderr streams).
    pub stdout: String,
    /// notebook-guard's notices that reached this cell (`[notebook-guard] …` lines).
    #[serde(default)]
    pub notices: Vec<String>,
    pub ename: Option<String>,
}

/// The longest a kernel driver may take. A session here takes seconds; one still running
/// after this is stuck, even though each of its own waits (start, each cell) is bounded.
pub const DRIVER_LIMIT: Duration = Duration::from_secs(180);

/// Runs `cells` in a real IPython kernel started inside `cgroup` (as a spawner would), with
/// `notebook` as its session name and `token` as its JUPYTERHUB_API_TOKEN.
pub fn run_notebook(cgroup: &TestCgroup, notebook: &str, token: &str, cells: &[&str]) -> Result<Vec<CellResult>> {
    run_notebook_in(cgroup, None, notebook, token, cells)
}

/// As `run_notebook`, in the network namespace `netns` when given.
pub fn run_notebook_in(
    cgroup: &TestCgroup,
    netns: Option<&str>,
    notebook: &str,
    token: &str,
    cells: &[&str],
) -> Result<Vec<CellResult>> {
    run_notebook_spec(cgroup, netns, token, serde_json::json!({"notebook": notebook, "cells": cells}))
}

/// As `run_notebook_in`, with the driver's whole spec (`py/run_cells.py` says what it takes).
pub fn run_notebook_spec(
    cgroup: &TestCgroup,
    netns: Option<&str>,
    token: &str,
    spec_json: serde_json::Value,
) -> Result<Vec<CellResult>> {
    let dir = TempDir::new("cells")?;
    let spec = dir.0.join("cells.json");
    let results = dir.0.join("results.json");
    fs::write(&spec, serde_json::to_vec(&spec_json)?)?;
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/run_cells.py");
    // `ip netns exec` mounts a fresh /sys, so the cgroup is joined before entering it.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-c").arg(format!(
                "echo $$ > {}; exec ip netns exec {ns} {} {} {} {}",
                cgroup.path.join("cgroup.procs").display(),
                test_python().display(),
                driver.display(),
                spec.display(),
                results.display()
            ));
            c
        }
        None => {
            let mut c = std::process::Command::new(test_python());
            c.arg(&driver).arg(&spec).arg(&results).env("GUARD_CGROUP", &cgroup.path);
            c
        }
    };
    cmd.env("GUARD_TEST_TOKEN", token).current_dir(&dir.0);
    let out = output_within(&mut cmd, DRIVER_LIMIT)
        .context("running the kernel driver (cargo xtask test creates target/pyenv)")?;
    if !out.status.success() {
        bail!("kernel driver failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&fs::read(&results)?)?)
}
