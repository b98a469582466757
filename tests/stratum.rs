//! Stratum on the wire, read in the kernel: a stand-in pool in the test's world namespace
//! listens on its pool port and on 443. From notebooks (uid 1000, TLJH-shaped units), an
//! XMRig-style `login` on the pool port and a `mining.subscribe` hidden on 443 are mining
//! calls whatever the binary is called (here Python); plain HTTP on 443 and a JSON-RPC call
//! that is not mining, on the pool port, are not. Monitored: alerted, delivered. Enforced: the
//! call never reaches the pool, the process is killed, the alert says so.

use std::{path::PathBuf, process::Command, time::Duration};

use guard_tests::*;
use serde_json::{json, Value};

const POOL: &str = "203.0.113.10";

fn cases(tag: &str) -> Vec<(&'static str, u16, String)> {
    vec![
        (
            "login",
            3333,
            format!(
                "{{\"id\":\"{tag}-1\",\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":\"4{}\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0\"}}}}\n",
                "B".repeat(94)
            ),
        ),
        ("subscribe", 443, format!("{{\"id\": \"{tag}-2\", \"method\": \"mining.subscribe\", \"params\": [\"cpuminer/2.5\"]}}\n")),
        ("http", 443, format!("GET /{tag} HTTP/1.1\r\nHost: pool\r\n\r\n")),
        ("json-rpc", 3333, format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{tag}-4\",\"method\":\"getblockcount\",\"params\":[]}}\n")),
    ]
}

/// The pool's process, ended on drop (a failed assertion must not leave it holding the
/// test's output open).
struct Pool(std::process::Child);

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the client as uid 1000 in the notebook's cgroup and namespace: (exit code, stdout).
fn send(net: &TestNet, cg: &TestCgroup, port: u16, payload: &str) -> (Option<i32>, String) {
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/pool_client.py");
    let payload = serde_json::to_string(payload).unwrap();
    let script = format!(
        "echo $$ > {}; exec ip netns exec {} setpriv --reuid=1000 --regid=1000 --clear-groups {} {} {POOL} {port} '{payload}'",
        cg.path.join("cgroup.procs").display(),
        net.notebook,
        test_python().display(),
        client.display(),
    );
    let out = Command::new("/bin/sh").arg("-c").arg(script).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn mining_calls_are_known_on_any_port_and_dropped_under_enforcement() {
    privileged!();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("pool").unwrap();
    let (log, ready) = (dir.0.join("pool.log"), dir.0.join("pool-ready"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/pool.py");
    let pool = Command::new("ip")
        .args(["netns", "exec", &net.world])
        .arg(test_python())
        .args([script.as_os_str(), POOL.as_ref(), log.as_os_str(), ready.as_os_str(), "3333".as_ref(), "443".as_ref()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pool = Pool(pool);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the pool did not start");
    let (monitored, user_m) = TestCgroup::tljh().unwrap();
    let (enforced, user_e) = TestCgroup::tljh().unwrap();
    let policy = format!("overrides:\n  - name: under-test\n    match: {{users: [{user_e}]}}\n    mode: enforce\n");
    let guard = GuardProcess::start(&policy, &[]).unwrap();
    let mut results = std::collections::BTreeMap::new();
    for (who, cg, tag) in [("monitored", &monitored, "m"), ("enforced", &enforced, "e")] {
        for (name, port, payload) in cases(tag) {
            results.insert(format!("{who}/{name}"), send(&net, cg, port, &payload));
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    let glog = guard.log();
    let alerts = guard.stop().unwrap();
    drop(pool);
    let received: Vec<Value> =
        std::fs::read_to_string(&log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got = |tag: &str| received.iter().any(|r| r["data"].as_str().unwrap_or("").contains(tag));

    // Monitored: everything is delivered and answered; the two mining calls are alerted.
    for name in ["login", "subscribe", "http", "json-rpc"] {
        assert_eq!(results[&format!("monitored/{name}")], (Some(0), "answered".to_string()), "{results:#?}\n{glog}");
    }
    for tag in ["m-1", "m-2", "GET /m", "m-4"] {
        assert!(got(tag), "the pool got {tag}: {received:#?}");
    }
    // Enforced: the mining calls never reach the pool and their process is killed; the rest
    // goes through.
    for name in ["login", "subscribe"] {
        assert_eq!(results[&format!("enforced/{name}")].0, None, "killed by a signal: {results:#?}\n{glog}");
    }
    for name in ["http", "json-rpc"] {
        assert_eq!(results[&format!("enforced/{name}")], (Some(0), "answered".to_string()), "{results:#?}");
    }
    assert!(!got("e-1") && !got("e-2"), "a dropped call reached the pool: {received:#?}");
    assert!(got("GET /e") && got("e-4"), "{received:#?}");

    let mining = |user: &str| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = alerts
            .iter()
            .filter(|a| a["rule"] == "notebook.crypto_mining" && field(a, "jupyterhub.user") == user)
            .map(|a| {
                let s = |k: &str| field(a, k).as_str().unwrap_or("").to_string();
                (s("fd.name"), s("guard.detail"), s("guard.action"))
            })
            .collect();
        v.sort();
        v
    };
    let want = |action: &str| {
        vec![
            (format!("{POOL}:3333"), "stratum method=login".to_string(), action.to_string()),
            (format!("{POOL}:443"), "stratum method=mining.subscribe".to_string(), action.to_string()),
        ]
    };
    assert_eq!(mining(&user_m), want("alert"), "{alerts:#?}");
    assert_eq!(mining(&user_e), want("killed"), "{alerts:#?}");
    let a = alerts.iter().find(|a| a["rule"] == "notebook.crypto_mining").unwrap();
    assert!(a["tags"].as_array().unwrap().contains(&json!("T1496")));
}
