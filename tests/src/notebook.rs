//! What the notebook tests share: the test policy, the session's notebook and token, one
//! user's alerts, and a server started the way a spawner starts it.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::{field, test_python, TempDir, TestCgroup};

pub const NOTEBOOK: &str = "projects/secret-analysis.ipynb";
pub const TOKEN: &str = "tok-3f9a8c7e5d1b2a4f6e8d0c9b7a5f3e1d";

/// The test policy: the embedded default plus this venv's interpreter and this test binary as
/// a launcher (it starts the kernel driver the way a spawner would).
/// `enforce_user`: put only this user's notebook under enforcement (tests run in parallel and
/// each guard sees every test's notebook).
pub fn policy(enforce_user: Option<&str>) -> String {
    let venv_bin = test_python().parent().unwrap().to_path_buf();
    let me = std::env::current_exe().unwrap();
    let me = me.file_name().unwrap().to_string_lossy();
    let default = guard::policy::Policy::default_policy();
    let mut interpreters: Vec<String> = default.python.interpreters.clone();
    interpreters.push(format!("{}/python*", venv_bin.display()));
    let mut launchers: Vec<String> = default.launchers.iter().cloned().collect();
    launchers.push(me.into_owned());
    let overrides = match enforce_user {
        Some(u) => format!("overrides:\n  - name: under-test\n    match: {{users: [{u}]}}\n    mode: enforce\n"),
        None => String::new(),
    };
    format!(
        "mode: monitor\npython:\n  interpreters: {}\nlaunchers: {}\n{overrides}",
        serde_json::to_string(&interpreters).unwrap(),
        serde_json::to_string(&launchers).unwrap()
    )
}

/// `user`'s alerts, without the posture findings every notebook of a test host raises.
pub fn mine(alerts: Vec<Value>, user: &str) -> Vec<Value> {
    alerts
        .into_iter()
        .filter(|a| field(a, "jupyterhub.user") == user)
        .filter(|a| !a["rule"].as_str().is_some_and(|r| r.starts_with("posture.")))
        .collect()
}

/// One line per alert, for assertion messages.
pub fn summary(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|a| format!("  {} {} {}", a["rule"], field(a, "guard.action"), a["output"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a Python script named `name` (with `#!` to the test venv) inside `cg`: a shell moves
/// itself into the cgroup and execs it, as a spawner would. Returns (exit status, stdout).
pub fn run_server_script(cg: &TestCgroup, name: &str, body: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = TempDir::new("server").unwrap();
    let script = dir.0.join(name);
    std::fs::write(&script, format!("#!{}\n{body}", test_python().display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo $$ > {}; exec {}", cg.path.join("cgroup.procs").display(), script.display()))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}
