//! A real JupyterHub: `jupyterhub` and `jupyter_server` from PyPI, `configurable-http-proxy`
//! from npm, JupyterHub's default LocalProcessSpawner, system users, everything driven through
//! the hub's REST API with a service token (`py/hub.py`). The hub runs in its own unit's cgroup
//! and in a network namespace of the test's own; kernels are started by each user's server
//! through its sessions API, behind the proxy, which is what sets `JPY_SESSION_NAME`.

use std::{path::PathBuf, time::Duration};

use guard_tests::{unit::Unit, *};
use serde_json::Value;

const NOTEBOOK: &str = "work/analysis.ipynb";

/// The venv with jupyterhub, jupyter_server and ipykernel, and the proxy, made by
/// `cargo xtask test` (`GUARD_HUB_ENV`, `GUARD_CHP`).
fn hub_parts() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let env = std::env::var_os("GUARD_HUB_ENV").map(PathBuf::from).unwrap_or(root.join("hubenv"));
    let chp = std::env::var_os("GUARD_CHP")
        .map(PathBuf::from)
        .unwrap_or(root.join("chp/node_modules/.bin/configurable-http-proxy"));
    assert!(env.join("bin/jupyterhub").exists(), "{} has no jupyterhub (cargo xtask test makes it)", env.display());
    assert!(chp.exists(), "{} is missing (cargo xtask test installs it)", chp.display());
    (env, chp)
}

/// A system user with a home directory, removed on drop.
struct SystemUser(String);

impl SystemUser {
    fn new(tag: char) -> Self {
        let name = format!("nbh{}{tag}", std::process::id());
        let _ = std::process::Command::new("userdel").args(["-r", &name]).output();
        let out = std::process::Command::new("useradd").args(["-m", "-s", "/bin/bash", &name]).output().unwrap();
        assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
        Self(name)
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill").args(["-KILL", "-u", &self.0]).output();
        let _ = std::process::Command::new("userdel").args(["-r", &self.0]).output();
    }
}

fn policy(enforced: &str) -> String {
    let default = guard::policy::Policy::default_policy();
    let mut launchers: Vec<String> = default.launchers.iter().cloned().collect();
    launchers.push("unitd".into());
    format!(
        "mode: monitor\nlaunchers: {}\noverrides:\n  - name: under-test\n    match: {{users: [{enforced}]}}\n    mode: enforce\n",
        serde_json::to_string(&launchers).unwrap()
    )
}

const CELLS: &[&str] = &[
    "import os\nprint('rc', os.system('/bin/echo HUB-EXEC'))",
    "import socket\ntry:\n    socket.create_connection(('10.0.0.5', 80), timeout=3)\n    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)",
    "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(6*7)'], capture_output=True, text=True).stdout.strip())",
    "import platform\nplatform.processor()\nprint('alive', os.getuid() != 0)",
];

fn field<'a>(a: &'a Value, k: &str) -> &'a Value {
    &a["output_fields"][k]
}

#[test]
fn a_real_hubs_local_process_notebooks_are_enforced_across_an_agent_restart() {
    if !require_root("a_real_hubs_local_process_notebooks_are_enforced_across_an_agent_restart") {
        return;
    }
    let (hubenv, chp) = hub_parts();
    let (alice, bob) = (SystemUser::new('a'), SystemUser::new('b'));
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("hub").unwrap();
    let go = dir.0.join("go");
    let spec = serde_json::json!({
        "hubenv": hubenv, "chp": chp, "dir": dir.0.join("w"), "users": [&alice.0, &bob.0],
        "notebook": NOTEBOOK, "cells": CELLS, "go": go,
    });
    std::fs::write(dir.0.join("spec.json"), spec.to_string()).unwrap();
    let results = dir.0.join("results.json");
    // The hub is the first agent's to see start; the second one adopts it mid-session.
    let first = GuardProcess::start(&policy(&alice.0), &[]).unwrap();
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
    let second = GuardProcess::start_pinned(&policy(&alice.0), &[], &[], pins).unwrap();
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
    let out =
        |user: &str, cell: usize| r["users"][user]["cells"][cell]["stdout"].as_str().unwrap_or("").trim().to_string();
    assert_eq!(r["hub_ok_after"], true, "the hub and the proxy kept working: {r:#}");

    // alice is enforced: her kernel's shell is killed and her connect refused; Python work runs.
    assert_eq!(out(&alice.0, 0), "rc 9", "{r:#}\n{log}");
    assert_eq!(out(&alice.0, 1), "errno 1", "{r:#}");
    assert_eq!(out(&alice.0, 2), "42", "{r:#}");
    assert_eq!(out(&alice.0, 3), "alive True", "{r:#}");
    // bob is monitored: the same cells run, and are reported.
    assert_eq!(out(&bob.0, 0), "HUB-EXEC\nrc 0", "{r:#}");
    assert_eq!(out(&bob.0, 1), "errno 111", "{r:#}");

    // The adopting agent names user, notebook and kernel for kernels it never saw start.
    for (user, action) in [(&alice.0, "killed"), (&bob.0, "alert")] {
        let a = after
            .iter()
            .find(|a| a["rule"] == "notebook.non_python_exec" && field(a, "jupyterhub.user") == user.as_str())
            .unwrap_or_else(|| panic!("no exec alert for {user}:\n{after:#?}\n{log}"));
        assert_eq!(field(a, "guard.action"), action, "{a:#}");
        assert_eq!(field(a, "jupyterhub.source"), "localprocessspawner");
        assert_eq!(field(a, "notebook.path"), format!("/home/{user}/analysis.ipynb").as_str(), "{a:#}");
        assert_eq!(field(a, "notebook.kernel_id"), &r["users"][user.as_str()]["kernel_id"], "{a:#}");
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
