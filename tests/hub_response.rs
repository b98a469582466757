//! Answering through JupyterHub: a real hub (LocalProcessSpawner, the proxy, system users,
//! started in its own unit as it runs on a TLJH-like host), two users whose servers' kernels
//! are started through the sessions API. alice's kernel runs a miner's command line: the
//! guard asks the hub, with a token from a file, to stop her server and put her in a
//! quarantine group, and says what the hub answered. bob's work raises nothing and his server
//! is left alone. Checked through the hub's own API.

use std::{path::PathBuf, time::Duration};

use guard_tests::{
    hub::{hub_parts, SystemUser},
    unit::{unit_policy, Unit},
    *,
};
use serde_json::Value;

/// The hub's service token (`py/hub.py`), with admin:servers and admin:groups.
const TOKEN: &str = "guard-test-service-token-5f1c2a";

#[test]
fn a_miner_in_a_notebook_gets_its_server_stopped_through_the_hub() {
    privileged!();
    let (hubenv, chp) = hub_parts();
    let (alice, bob) = (SystemUser::new('m'), SystemUser::new('n'));
    let dir = TempDir::new("hub-response").unwrap();
    let token = dir.0.join("hub-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let cells = [
        format!(
            "import getpass, subprocess\nif getpass.getuser() == {:?}:\n    \
             subprocess.run(['/bin/true', '-o', 'stratum+tcp://198.51.100.8:3333'])\nprint('ran')",
            alice.0
        ),
        "print(6 * 7)".to_string(),
    ];
    let spec = serde_json::json!({
        "hubenv": hubenv, "chp": chp, "dir": dir.0.join("w"),
        "servers": [&alice.0, &bob.0], "notebook": "analysis.ipynb", "cells": cells,
        "answered": [&alice.0, &bob.0],
    });
    let spec_path = dir.0.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let results = dir.0.join("results.json");
    // The hub listens on the host's loopback (8081), where the agent reaches its API.
    let policy = format!(
        "{}response:\n  hub_api_url: http://127.0.0.1:8081/hub/api\n  token_file: {}\n  \
         rules: [notebook.crypto_mining]\n  block_group: quarantine\n  min_interval_seconds: 60\n",
        unit_policy(None),
        token.display()
    );
    let guard = GuardProcess::start(&policy, &[]).unwrap();
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/hub.py");
    let python = hubenv.join("bin/python");
    let rel = PathBuf::from(format!("/system.slice/hubtest-{}-1", std::process::id()));
    let argv =
        [python.to_str().unwrap(), driver.to_str().unwrap(), spec_path.to_str().unwrap(), results.to_str().unwrap()];
    let hub = Unit::start_in(&rel, (0, 0), "hub", &argv, None).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !results.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub driver never finished:\n{}\n{}",
            hub.log(),
            std::fs::read_to_string(dir.0.join("w/hub.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = guard.log();
    let alerts = guard.stop().unwrap();
    drop(hub);
    let r: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    let out =
        |user: &str, cell: usize| r["servers"][user]["cells"][cell]["stdout"].as_str().unwrap_or("").trim().to_string();
    assert_eq!([out(&alice.0, 0), out(&bob.0, 1)], ["ran", "42"], "{r:#}");

    // alice's server was stopped by the guard's call, and she is in the quarantine group; bob's
    // server stayed up (his driver stopped it after 20 s of waiting) and he is in no group.
    assert_eq!(r["stopped_by_others"][alice.0.as_str()], true, "{r:#}\n{log}");
    assert_eq!(r["stopped_by_others"][bob.0.as_str()], false, "{r:#}");
    assert_eq!(r["groups"][alice.0.as_str()], serde_json::json!(["quarantine"]), "{r:#}");
    assert_eq!(r["groups"][bob.0.as_str()], serde_json::json!([]), "{r:#}");

    let responses: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "guard.response").collect();
    assert_eq!(responses.len(), 1, "one answer, for alice: {responses:#?}\n{log}");
    let a = responses[0];
    assert_eq!(field(a, "jupyterhub.user"), alice.0.as_str());
    assert_eq!(field(a, "guard.trigger"), "notebook.crypto_mining");
    assert_eq!(field(a, "guard.response_ok"), true, "{a:#}");
    let asked: Vec<&str> = field(a, "guard.response").as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(asked[0].starts_with(&format!("DELETE /users/{}/server → 20", alice.0)), "{asked:?}");
    assert!(asked.iter().any(|c| c.starts_with("POST /groups/quarantine/users → 200")), "{asked:?}");
    // The token never leaves its file.
    let everything = format!("{alerts:?}{log}");
    assert!(!everything.contains(TOKEN), "the hub token leaked");
}
