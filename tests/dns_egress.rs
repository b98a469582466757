//! Egress by name: a DNS server in the test's world namespace answers the notebook's system
//! resolver (glibc, through /etc/netns's resolv.conf); the policy allows DNS and two names,
//! nothing else. What an allowed name resolved to connects on the first try, from uid 1000
//! in a TLJH-shaped unit; other ports, other names and bare addresses are refused in the
//! kernel and alerted with the name the notebook looked up; an answer's TTL ends what it
//! allowed; IPv6, CNAME chains and DNS over TCP work the same.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::PathBuf, process::Child, time::Duration};

use guard_tests::*;
use serde_json::{json, Value};

/// The world-side server at 10.0.0.53 and the notebook side's resolv.conf, gone on drop.
struct Dns {
    server: Child,
    netns_etc: PathBuf,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.netns_etc);
    }
}

fn zone() -> Value {
    json!({
        "pypi.test.example": {"ttl": 300, "A": ["203.0.113.10"], "AAAA": ["2001:db8::10"]},
        "files.data.example": {"ttl": 300, "CNAME": "edge.cdn.example"},
        "edge.cdn.example": {"ttl": 300, "A": ["10.0.0.5"]},
        "short.data.example": {"ttl": 1, "A": ["10.0.0.53"]},
        "tcp.data.example": {"ttl": 300, "A": ["10.0.0.53"]},
        "meta.data.example": {"ttl": 300, "A": ["100.100.100.200"]},
        "other.test.example": {"ttl": 300, "A": ["203.0.113.10"]},
        "evil.test.example": {"ttl": 300, "A": ["198.51.100.8"]},
    })
}

fn start_dns(net: &TestNet, dir: &TempDir) -> Dns {
    let zone_file = dir.0.join("zone.json");
    std::fs::write(&zone_file, zone().to_string()).unwrap();
    let ready = dir.0.join("dns-ready");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/dns_server.py");
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &net.world])
        .arg(test_python())
        .args([script.as_os_str(), "10.0.0.53".as_ref(), zone_file.as_os_str(), ready.as_os_str()])
        .spawn()
        .unwrap();
    // `ip netns exec` puts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
    let netns_etc = PathBuf::from("/etc/netns").join(&net.notebook);
    std::fs::create_dir_all(&netns_etc).unwrap();
    std::fs::write(netns_etc.join("resolv.conf"), "nameserver 10.0.0.53\noptions timeout:2 attempts:2\n").unwrap();
    let dns = Dns { server, netns_etc };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the DNS server did not start");
    dns
}

/// Runs the client's steps as uid 1000 in the notebook's namespace and cgroup.
fn run_steps(
    net: &TestNet,
    cg: &TestCgroup,
    dir: &TempDir,
    tag: &str,
    steps: Value,
    env: &str,
) -> BTreeMap<String, Value> {
    let file = dir.0.join(format!("{tag}.json"));
    std::fs::write(&file, steps.to_string()).unwrap();
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/dns_client.py");
    let python = test_python();
    let cmd = [
        "env",
        env,
        "setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        python.to_str().unwrap(),
        client.to_str().unwrap(),
        file.to_str().unwrap(),
    ];
    let out = net.run_in(cg, &cmd).unwrap();
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect()
}

#[test]
fn names_allow_what_they_resolved_to_from_the_first_connect_and_alerts_say_the_name() {
    privileged!();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("dns-egress").unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _dns = start_dns(&net, &dir);
    let (cg, user) = TestCgroup::tljh().unwrap();
    let policy = format!(
        "egress:\n  nonPrivateIPs: false\n  dnsTTL: {{min: 1, max: 3600}}\n  allow:\n    \
         - {{domain: pypi.test.example, ports: [443], protocol: tcp}}\n    \
         - {{domain: \"*.data.example\", ports: [443]}}\n\
         overrides:\n  - name: under-test\n    match: {{users: [{user}]}}\n    mode: enforce\n"
    );
    let guard = GuardProcess::start(&policy, &[]).unwrap();
    let udp = run_steps(
        &net,
        &cg,
        &dir,
        "udp",
        json!([
            {"name": "pypi", "host": "pypi.test.example", "port": 443},
            {"name": "pypi-v6", "host": "pypi.test.example", "port": 443, "family": 6},
            {"name": "pypi-other-port", "host": "pypi.test.example", "port": 80},
            {"name": "cname-chain", "host": "files.data.example", "port": 443},
            {"name": "other-name", "host": "evil.test.example", "port": 443},
            {"name": "bare-address", "again": "other-name", "port": 8443},
            {"name": "never-named", "host": "203.0.113.66", "port": 443},
            {"name": "short-ttl", "host": "short.data.example", "port": 443},
            {"sleep": 2.5},
            {"name": "short-ttl-expired", "again": "short-ttl", "port": 443},
            {"name": "pypi-still", "again": "pypi", "port": 443},
            {"name": "metadata-by-name", "host": "meta.data.example", "port": 443},
        ]),
        "LANG=C",
    );
    // glibc asks over TCP with `use-vc`: the answer is read from the TCP segment (and allows
    // again the address whose short TTL ran out above).
    let tcp = run_steps(
        &net,
        &cg,
        &dir,
        "tcp",
        json!([{"name": "over-tcp", "host": "tcp.data.example", "port": 443}]),
        "RES_OPTIONS=use-vc",
    );
    // Another notebook, monitored: pypi's address under another name is not allowed there
    // (answers count per notebook); it passes, alerted with the name it was looked up by.
    let (cg2, user2) = TestCgroup::tljh().unwrap();
    let monitored = run_steps(
        &net,
        &cg2,
        &dir,
        "monitored",
        json!([{"name": "other", "host": "other.test.example", "port": 443}]),
        "LANG=C",
    );
    std::thread::sleep(Duration::from_millis(400));
    let log = guard.log();
    let every = guard.stop().unwrap();
    let of = |u: &str| -> Vec<Value> {
        every.iter().filter(|a| a["output_fields"]["jupyterhub.user"] == u).cloned().collect()
    };
    let alerts = of(&user);
    assert_eq!(monitored["other"]["result"], "ok", "monitor mode changes nothing: {monitored:?}");
    // (The client, run from outside the unit as `kubectl exec` would, raises exec alerts there.)
    let theirs: Vec<Value> = of(&user2).into_iter().filter(|a| a["rule"] == "notebook.unexpected_egress").collect();
    assert_eq!(theirs.len(), 1, "{theirs:#?}");
    let f = &theirs[0]["output_fields"];
    assert_eq!(
        (&f["fd.name"], &f["fd.sip.name"], &f["guard.action"]),
        (&json!("203.0.113.10:443"), &json!("other.test.example"), &json!("alert"))
    );
    let result = |name: &str| udp.get(name).or_else(|| tcp.get(name)).map(|v| v["result"].as_str().unwrap_or("?"));
    let all = || format!("udp: {udp:?}\ntcp: {tcp:?}\n{log}");
    for ok in ["pypi", "pypi-v6", "cname-chain", "short-ttl", "pypi-still", "over-tcp"] {
        assert_eq!(result(ok), Some("ok"), "{ok} is allowed by name from its first connect:\n{}", all());
    }
    let refused =
        ["pypi-other-port", "other-name", "bare-address", "never-named", "short-ttl-expired", "metadata-by-name"];
    for refused in refused {
        assert_eq!(result(refused), Some("EPERM"), "{refused}:\n{}", all());
    }
    assert_eq!(udp["pypi-v6"]["addr"], "2001:db8::10");
    assert_eq!(udp["cname-chain"]["addr"], "10.0.0.5", "a private address, allowed by the name that led to it");
    // Each refusal alerted once, with the name the notebook looked the address up by.
    let egress: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "notebook.unexpected_egress").collect();
    let named = |dest: &str| -> Vec<Value> {
        egress
            .iter()
            .filter(|a| a["output_fields"]["fd.name"] == dest)
            .map(|a| a["output_fields"]["fd.sip.name"].clone())
            .collect()
    };
    assert_eq!(named("203.0.113.10:80"), [json!("pypi.test.example")], "{egress:#?}");
    assert_eq!(named("198.51.100.8:443"), [json!("evil.test.example")], "{egress:#?}");
    assert_eq!(named("198.51.100.8:8443"), [json!("evil.test.example")], "the address was named before");
    assert_eq!(named("10.0.0.53:443"), [json!("short.data.example")], "after the TTL: {egress:#?}");
    assert_eq!(named("203.0.113.66:443"), [Value::Null], "no lookup, no name: {egress:#?}");
    let evil = egress.iter().find(|a| a["output_fields"]["fd.name"] == "198.51.100.8:443").unwrap();
    assert!(
        evil["output"].as_str().unwrap().contains("dest=evil.test.example (198.51.100.8:443)"),
        "the output line names it: {}",
        evil["output"]
    );
    assert!(egress.iter().all(|a| a["output_fields"]["guard.action"] == "denied"), "{egress:#?}");
    assert_eq!(egress.len(), 5, "nothing allowed was alerted: {egress:#?}");
    // An explicit deny (here the metadata endpoints) holds whatever name led there.
    let metadata: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "notebook.cloud_metadata_access").collect();
    assert_eq!(metadata.len(), 1, "{metadata:#?}");
    assert_eq!(metadata[0]["output_fields"]["fd.sip.name"], "meta.data.example");
}
