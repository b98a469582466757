//! Kernels of other languages, as hubs offer them: Debian's IRkernel, whose kernelspec an admin
//! installed in /usr/share/jupyter/kernels/ir, started by a real Jupyter server (through its
//! sessions API) that runs as uid 1000 in a TLJH-shaped unit. R's launcher is a bash wrapper
//! that runs uname and sed before it execs the R binary, and IRkernel runs two shell commands
//! as it starts: none of that is a bypass. What the R kernel runs afterwards (`system()`) is.

use std::time::Duration;

use guard_tests::{
    pod::open_session,
    unit::{jupyter_server, unit_policy, Unit},
    *,
};
use serde_json::Value;

const TOKEN: &str = "r-kernel-server-token-41c2";

const CELLS: &[&str] = &[
    "cat('alive', 1 + 1, '\\n')",
    "x <- tryCatch(system('echo R-SYSTEM', intern = TRUE), error = function(e) 'failed', warning = function(w) 'failed')\ncat(x, '\\n')",
    "cat('after', '\\n')",
];

#[test]
fn an_admin_installed_r_kernel_starts_quietly_and_what_it_runs_is_judged() {
    privileged!();
    assert!(
        std::path::Path::new("/usr/share/jupyter/kernels/ir/kernel.json").exists(),
        "Debian's r-cran-irkernel (cargo xtask test installs it)"
    );
    let net = TestNet::new().unwrap();
    let (enforced, monitored) = (Unit::new_user(), Unit::new_user());
    let g = GuardProcess::start(&unit_policy(Some(&enforced)), &[]).unwrap();
    let r_tmp = || -> Vec<std::path::PathBuf> {
        let dirs = std::fs::read_dir("/tmp").map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>());
        dirs.unwrap_or_default().into_iter().filter(|p| p.to_string_lossy().starts_with("/tmp/Rtmp")).collect()
    };
    let tmp_before = r_tmp();
    let mut results = Vec::new();
    for (user, port) in [(&enforced, 8890u16), (&monitored, 8891)] {
        let dir = TempDir::new("r-server").unwrap();
        let unit = jupyter_server(user, port, TOKEN, &net.notebook, &dir);
        let spec = serde_json::json!({
            "url": format!("http://127.0.0.1:{port}"), "token": TOKEN, "notebook": "analysis.ipynb",
            "kernel": "ir", "cells": CELLS, "runtime_dir": dir.0.join("runtime"),
        });
        let (kid, cells) =
            open_session(&net.notebook, spec, &dir.0).unwrap_or_else(|e| panic!("{e:#}\n{}", unit.log()));
        results.push((user.clone(), kid, cells, dir.0.display().to_string()));
        drop(unit);
    }
    // Each kernel removed its session temp dir as it stopped, enforced or not.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r_tmp().iter().any(|d| !tmp_before.contains(d)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = r_tmp().into_iter().filter(|d| !tmp_before.contains(d)).collect();
    assert!(left.is_empty(), "R's temp dirs left behind: {left:?}");
    std::thread::sleep(Duration::from_millis(300));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let out = |cells: &[CellResult]| cells.iter().map(|c| c.stdout.trim().to_string()).collect::<Vec<_>>();

    // The kernel starts and answers in both modes; under enforcement its system() is killed.
    let (_, _, e, _) = &results[0];
    assert_eq!(out(e)[0], "alive 2", "{e:?}\n{log}");
    assert!(!out(e)[1].contains("R-SYSTEM"), "R's system() ran under enforcement: {e:?}");
    assert_eq!(out(e)[2], "after", "{e:?}");
    let (_, _, m, _) = &results[1];
    assert_eq!(out(m)[0], "alive 2", "{m:?}");
    assert!(out(m)[1].contains("R-SYSTEM"), "{m:?}");

    for (user, kid, _, dir) in &results {
        let mine: Vec<&Value> = alerts.iter().filter(|a| field(a, "jupyterhub.user") == user.as_str()).collect();
        // The kernel's start (wrapper, uname, sed, IRkernel's own commands) and its stop (R
        // removing its session temp dir, `sh -c rm -Rf /tmp/RtmpXXXXXX`) raise nothing: the one
        // alert is the cell's system().
        let notebook: Vec<&&Value> =
            mine.iter().filter(|a| a["rule"].as_str().is_some_and(|r| r.starts_with("notebook."))).collect();
        assert_eq!(notebook.len(), 1, "{user}: {notebook:#?}\n{log}");
        let a = notebook[0];
        assert_eq!(a["rule"], "notebook.non_python_exec");
        assert_eq!(field(a, "proc.cmdline"), "sh -c echo R-SYSTEM");
        assert_eq!(field(a, "proc.pexepath"), "/usr/lib/R/bin/exec/R");
        assert_eq!(field(a, "notebook.kernel_id"), kid.as_str());
        assert_eq!(field(a, "notebook.path"), format!("{dir}/analysis.ipynb").as_str());
        let action = if *user == enforced { "killed" } else { "alert" };
        assert_eq!(field(a, "guard.action"), action, "{a:#}");
    }
    assert!(log.contains("\"ir\""), "the agent names the kernels it found:\n{log}");
}
