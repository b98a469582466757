//! Fan-out in the kernel: a notebook process (uid 1000, in a TLJH-shaped unit) connecting to
//! forty ports of one host in a burst is one `notebook.fan_out` alert (T1046), raised when it
//! reaches the default threshold (30 distinct destinations in 10 s); a process making a
//! handful of connections, or a hundred to one destination, as pip or a database client do,
//! raises none.

use std::path::PathBuf;

use guard_tests::*;
use serde_json::Value;

fn connect(net: &TestNet, cg: &TestCgroup, first: u16, count: u32, same: bool) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/fan_out.py");
    let python = test_python();
    let (first, count) = (first.to_string(), count.to_string());
    let mut cmd = vec!["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", python.to_str().unwrap()];
    cmd.extend([script.to_str().unwrap(), "203.0.113.10", &first, &count]);
    if same {
        cmd.push("--same");
    }
    net.run_in(cg, &cmd).unwrap().trim().to_string()
}

#[test]
fn a_burst_of_connects_to_many_destinations_is_one_fan_out_alert() {
    privileged!();
    let net = TestNet::new().unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start("", &[]).unwrap();
    assert_eq!(connect(&net, &cg, 2000, 5, false), "5", "a handful, as pip makes");
    assert_eq!(connect(&net, &cg, 2100, 100, true), "100", "many to one destination");
    assert_eq!(connect(&net, &cg, 3000, 40, false), "40", "a scan of forty ports");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let log = guard.log();
    let alerts: Vec<Value> = guard
        .stop()
        .unwrap()
        .into_iter()
        .filter(|a| a["rule"] == "notebook.fan_out" && a["output_fields"]["jupyterhub.user"] == user.as_str())
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{log}");
    let f = &alerts[0]["output_fields"];
    assert_eq!(f["guard.count"], 30, "raised at the threshold: {f:#}");
    assert_eq!(f["fd.name"], "203.0.113.10:3029", "the destination that reached it: {f:#}");
    assert!(f["proc.cmdline"].as_str().is_some_and(|c| c.contains("fan_out.py 203.0.113.10 3000 40")), "{f:#}");
    assert!(alerts[0]["tags"].as_array().unwrap().iter().any(|t| t == "T1046"));
    assert!(f["guard.window_ms"].as_u64().is_some_and(|ms| ms < 10_000), "{f:#}");
}
