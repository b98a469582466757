//! A real JupyterHub: `jupyterhub` and `jupyter_server` from PyPI, `configurable-http-proxy`
//! from npm, JupyterHub's default LocalProcessSpawner, system users, everything driven through
//! the hub's REST API with a service token (`py/hub.py`). The hub runs in its own unit's cgroup
//! and in a network namespace of the test's own; kernels are started by each user's server
//! through its sessions API, behind the proxy, which is what sets `JPY_SESSION_NAME`.

use std::{path::PathBuf, time::Duration};

use guard_tests::{
    hub::{hub_parts, SystemUser},
    unit::{unit_policy, Unit},
    *,
};
use serde_json::Value;

const NOTEBOOK: &str = "work/analysis.ipynb";

const CELLS: &[&str] = &[
    "import os\nprint('rc', os.system('/bin/echo HUB-EXEC'))",
    "import socket\ntry:\n    socket.create_connection(('10.0.0.5', 80), timeout=3)\n    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)",
    "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(6*7)'], capture_output=True, text=True).stdout.strip())",
    "import platform\nplatform.processor()\nprint('alive', os.getuid() != 0)",
];

#[test]
fn a_real_hubs_local_process_notebooks_are_enforced_across_agent_and_server_restarts() {
    privileged!();
    let (hubenv, chp) = hub_parts();
    let (alice, bob) = (SystemUser::new('a'), SystemUser::new('b'));
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("hub").unwrap();
    let go = dir.0.join("go");
    let spec = serde_json::json!({
        "hubenv": hubenv, "chp": chp, "dir": dir.0.join("w"),
        "servers": [&alice.0, format!("{}/gpu", alice.0), &bob.0],
        "notebook": NOTEBOOK, "cells": CELLS, "go": go, "restart": true,
    });
    std::fs::write(dir.0.join("spec.json"), spec.to_string()).unwrap();
    let results = dir.0.join("results.json");
    // The hub is the first agent's to see start; the second one adopts it mid-session.
    let first = GuardProcess::start(&unit_policy(Some(&alice.0)), &[]).unwrap();
    let pins = first.pin_dir.clone();
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/hub.py");
    let python = hubenv.join("bin/python");
    // The hub's own unit (the harness's leftover sweep knows the `<name>-<pid>-<n>` shape).
    let rel = PathBuf::from(format!("/system.slice/hubtest-{}-0", std::process::id()));
    let spec_path = dir.0.join("spec.json");
    let argv =
        [python.to_str().unwrap(), driver.to_str().unwrap(), spec_path.to_str().unwrap(), results.to_str().unwrap()];
    let hub = Unit::start_in(&rel, (0, 0), "hub", &argv, Some(&net.notebook)).unwrap();
    let ready = dir.0.join("w/ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub never got both kernels up:\n{}\n{}",
            hub.log(),
            std::fs::read_to_string(dir.0.join("w/hub.log")).unwrap_or_default()
        );
        assert!(!results.exists(), "the hub driver ended early:\n{}", hub.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Servers and kernels are up; the agent restarts (a DaemonSet rollout) before the cells run.
    let before = first.stop_keep_pins().unwrap();
    let second = GuardProcess::start_pinned(&unit_policy(Some(&alice.0)), &[], &[], pins).unwrap();
    std::fs::write(&go, "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !results.exists() {
        assert!(std::time::Instant::now() < deadline, "the cells never finished:\n{}", hub.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = second.log();
    let after = second.stop().unwrap();
    drop(hub);
    let r: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    assert_eq!(r["hub_ok_after"], true, "the hub and the proxy kept working: {r:#}");
    let named = format!("{}/gpu", alice.0);
    let enforced = |run: &Value, what: &str| {
        let out = |cell: usize| run["cells"][cell]["stdout"].as_str().unwrap_or("").trim().to_string();
        // The shell is killed and the connect refused; Python work runs, not as root.
        assert_eq!(
            [out(0), out(1), out(2), out(3)],
            ["rc 9", "errno 1", "42", "alive True"].map(String::from),
            "{what}: {run:#}\n{log}"
        );
    };
    let monitored = |run: &Value, what: &str| {
        let out = |cell: usize| run["cells"][cell]["stdout"].as_str().unwrap_or("").trim().to_string();
        // The shell's output and the cell's own reach the front end in either order, even
        // within a line (ipykernel forwards the shell's fd output as it comes).
        let own: Vec<String> = out(0).replacen("HUB-EXEC", " ", 1).split_whitespace().map(String::from).collect();
        assert!(out(0).contains("HUB-EXEC") && own == ["rc", "0"] && out(1) == "errno 111", "{what}: {run:#}");
    };
    // alice's default server and her named one are enforced, bob's monitored; again after each
    // user stopped and started their server (a new server process, a new scope holder).
    for (phase, runs) in [("after the agent restart", &r["servers"]), ("after the servers restarted", &r["restarted"])]
    {
        enforced(&runs[alice.0.as_str()], &format!("alice, {phase}"));
        enforced(&runs[named.as_str()], &format!("alice/gpu, {phase}"));
        monitored(&runs[bob.0.as_str()], &format!("bob, {phase}"));
    }

    // The adopting agent names user, server, notebook and kernel, also for kernels it never saw
    // start; the named server is told apart from the default one.
    for (key, server, action) in [(&alice.0, "", "killed"), (&named, "gpu", "killed"), (&bob.0, "", "alert")] {
        let user = key.split('/').next().unwrap();
        for phase in ["servers", "restarted"] {
            let kid = &r[phase][key.as_str()]["kernel_id"];
            let a = after
                .iter()
                .find(|a| a["rule"] == "notebook.non_python_exec" && &a["output_fields"]["notebook.kernel_id"] == kid)
                .unwrap_or_else(|| panic!("no exec alert for {key} ({phase}):\n{after:#?}\n{log}"));
            assert_eq!(field(a, "guard.action"), action, "{a:#}");
            assert_eq!(field(a, "jupyterhub.user"), user, "{a:#}");
            assert_eq!(field(a, "jupyterhub.server").as_str().unwrap_or(""), server, "{a:#}");
            assert_eq!(field(a, "jupyterhub.source"), "localprocessspawner");
            assert_eq!(field(a, "notebook.path"), format!("/home/{user}/analysis.ipynb").as_str(), "{a:#}");
        }
    }
    assert!(after
        .iter()
        .any(|a| field(a, "jupyterhub.user") == alice.0.as_str() && field(a, "guard.action") == "denied"));
    // Nothing of the hub's or the proxy's own was judged.
    let hub_alerts: Vec<&Value> = before
        .iter()
        .chain(&after)
        .filter(|a| {
            field(a, "jupyterhub.user").is_null() && a["rule"].as_str().is_some_and(|r| r.starts_with("notebook."))
        })
        .collect();
    assert!(hub_alerts.is_empty(), "alerts without a notebook: {hub_alerts:#?}");
}
