//! Egress policy in the kernel, tested in network namespaces made by the test: the notebook
//! process runs in one, every destination address belongs to the other, nothing leaves them.

use std::collections::BTreeMap;

use guard_tests::*;
use serde_json::{json, Value};

fn targets() -> Value {
    json!([
        {"name": "metadata-tcp4", "kind": "tcp", "host": "169.254.169.254", "port": 80},
        {"name": "alibaba-metadata", "kind": "tcp", "host": "100.100.100.200", "port": 80},
        {"name": "private-tcp4", "kind": "tcp", "host": "10.0.0.5", "port": 5432},
        {"name": "public-tcp4", "kind": "tcp", "host": "203.0.113.10", "port": 443},
        {"name": "metadata-tcp6", "kind": "tcp", "host": "fd00:ec2::254", "port": 80},
        {"name": "public-tcp6", "kind": "tcp", "host": "2001:db8::10", "port": 443},
        {"name": "metadata-v4mapped", "kind": "tcp", "host": "::ffff:169.254.169.254", "port": 80},
        {"name": "private-udp-sendto", "kind": "udp-sendto", "host": "10.0.0.5", "port": 9999},
        {"name": "private-udp-connect", "kind": "udp-connect", "host": "10.0.0.5", "port": 9999},
        {"name": "dns-udp", "kind": "udp-sendto", "host": "10.0.0.53", "port": 53},
        {"name": "loopback", "kind": "tcp", "host": "127.0.0.1", "port": 9},
        {"name": "sniffer", "kind": "packet", "host": "", "port": 0},
        {"name": "raw-icmp", "kind": "raw", "host": "", "port": 0},
        {"name": "ping4", "kind": "ping", "host": "10.0.0.5", "port": 0},
        {"name": "ping6", "kind": "ping", "host": "2001:db8::10", "port": 0}
    ])
}

/// (target, result) from the client, run in the notebook namespace and cgroup.
fn run_client(net: &TestNet, cg: &TestCgroup) -> BTreeMap<String, String> {
    let dir = TempDir::new("targets").unwrap();
    let file = dir.0.join("targets.json");
    std::fs::write(&file, targets().to_string()).unwrap();
    let client = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/net_client.py");
    let out =
        net.run_in(cg, &[test_python().to_str().unwrap(), client.to_str().unwrap(), file.to_str().unwrap()]).unwrap();
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["result"].as_str().unwrap().to_string()))
        .collect()
}

/// One io_uring request (`uring-connect TARGET WAY`): WAY is inline, async or sqpoll.
fn uring(net: &TestNet, cg: &TestCgroup, target: &str, way: &str) -> String {
    net.run_in(cg, &[env!("CARGO_BIN_EXE_uring-connect"), target, way]).unwrap().trim().to_string()
}

fn policy(enforce_user: Option<&str>) -> String {
    match enforce_user {
        Some(u) => format!("overrides:\n  - name: under-test\n    match: {{users: [{u}]}}\n    mode: enforce\n"),
        None => String::new(),
    }
}

fn alert_for<'a>(alerts: &'a [Value], rule: &str, dest: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["rule"] == rule && a["output_fields"]["fd.name"] == dest)
}

#[test]
fn monitor_mode_alerts_on_forbidden_destinations_and_changes_nothing() {
    privileged!();
    let net = TestNet::new().unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    let results = run_client(&net, &cg);
    let ur = uring(&net, &cg, "10.0.0.5:80", "inline");
    let ur_packet = uring(&net, &cg, "packet-socket", "inline");
    let ur_async = uring(&net, &cg, "packet-socket", "async");
    let ur_sqpoll = uring(&net, &cg, "packet-socket", "sqpoll");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let log = guard.log();
    let alerts: Vec<Value> =
        guard.stop().unwrap().into_iter().filter(|a| a["output_fields"]["jupyterhub.user"] == user.as_str()).collect();
    for (name, r) in &results {
        assert_eq!(r, "ok", "monitor mode changes nothing: {name} → {r}");
    }
    assert_eq!(ur, "ok", "io_uring connect reached the destination");
    let show = || {
        alerts.iter().map(|a| format!("{} {}", a["rule"], a["output_fields"]["fd.name"])).collect::<Vec<_>>().join("\n")
    };
    for (rule, dest) in [
        ("notebook.cloud_metadata_access", "169.254.169.254:80"),
        ("notebook.cloud_metadata_access", "100.100.100.200:80"),
        ("notebook.unexpected_egress", "10.0.0.5:5432"),
        ("notebook.cloud_metadata_access", "[fd00:ec2::254]:80"),
        ("notebook.unexpected_egress", "10.0.0.5:9999"),
        ("notebook.unexpected_egress", "10.0.0.5:80"),
    ] {
        let a = alert_for(&alerts, rule, dest).unwrap_or_else(|| panic!("no {rule} for {dest}:\n{}\n{log}", show()));
        assert_eq!(a["output_fields"]["guard.action"], "alert");
        assert!(a["output_fields"]["fd.l4proto"].is_string());
    }
    // The v4-mapped address is judged as IPv4: the same metadata alert, once more aggregated.
    let md = alert_for(&alerts, "notebook.cloud_metadata_access", "169.254.169.254:80").unwrap();
    assert_eq!(md["output_fields"]["fd.sip"], "169.254.169.254");
    for allowed in ["203.0.113.10:443", "[2001:db8::10]:443", "10.0.0.53:53", "127.0.0.1:9"] {
        assert!(alerts.iter().all(|a| a["output_fields"]["fd.name"] != allowed), "{allowed} is allowed:\n{}", show());
    }
    assert_eq!(ur_packet, "ok", "io_uring socket(AF_PACKET) succeeded (monitor mode)");
    // Packet and raw sockets: through socket(2) with their kind, and through io_uring.
    let socket_alert = |family: &str, via: &str| {
        alerts.iter().find(|a| {
            let f = &a["output_fields"];
            a["rule"] == "notebook.packet_socket" && f["fd.family"] == family && f["syscall.type"] == via
        })
    };
    let sniffer = socket_alert("AF_PACKET", "socket").unwrap_or_else(|| panic!("sniffing socket:\n{}\n{log}", show()));
    assert_eq!(sniffer["output_fields"]["fd.socket_type"], 3, "SOCK_RAW");
    let raw = socket_alert("AF_INET", "socket").unwrap_or_else(|| panic!("raw ICMP socket:\n{}\n{log}", show()));
    assert_eq!(raw["output_fields"]["fd.protocol"], 1, "IPPROTO_ICMP");
    // Through io_uring: the kind is known where the hook sees the call's arguments (a kprobe
    // on security_socket_create), not where it sees only the capability check (cap_capable).
    assert!(
        socket_alert("AF_PACKET or raw", "io_uring_enter")
            .or_else(|| socket_alert("AF_PACKET", "io_uring_enter"))
            .is_some(),
        "packet socket through io_uring:\n{}\n{log}",
        show()
    );
    // ICMP datagram sockets: seen at creation (their sends pass no cgroup hook), and they work.
    for (family, protocol) in [("AF_INET", 1), ("AF_INET6", 58)] {
        let ping = alerts.iter().find(|a| {
            let f = &a["output_fields"];
            a["rule"] == "notebook.icmp_socket" && f["fd.family"] == family && f["fd.protocol"] == protocol
        });
        let ping = ping.unwrap_or_else(|| panic!("ICMP socket {family}:\n{}\n{log}", show()));
        assert_eq!(
            (ping["output_fields"]["fd.socket_type"].as_u64(), ping["output_fields"]["guard.action"].as_str()),
            (Some(2), Some("alert"))
        );
    }
    // Made by io_uring's own threads: an io-wq worker (IOSQE_ASYNC) and the SQPOLL thread,
    // whose saved registers show io_uring_setup. Each alert names the thread that made it.
    assert_eq!((ur_async.as_str(), ur_sqpoll.as_str()), ("ok", "ok"));
    for thread in ["iou-wrk-", "iou-sqp-"] {
        let made_by = |a: &&Value| {
            let f = &a["output_fields"];
            a["rule"] == "notebook.packet_socket"
                && f["syscall.type"] == "io_uring_enter"
                && f["proc.name"].as_str().is_some_and(|n| n.starts_with(thread))
        };
        assert!(alerts.iter().any(|a| made_by(&a)), "packet socket made by {thread}*:\n{}\n{log}", show());
    }
}

#[test]
fn enforce_mode_refuses_in_the_kernel() {
    privileged!();
    let net = TestNet::new().unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(Some(&user)), &[]).unwrap();
    let results = run_client(&net, &cg);
    // In each task io_uring can run a request in: the caller, an io-wq worker, the SQPOLL thread.
    let ur: Vec<String> = ["inline", "async", "sqpoll"].iter().map(|w| uring(&net, &cg, "10.0.0.5:80", w)).collect();
    let ur_ok = uring(&net, &cg, "203.0.113.10:443", "sqpoll");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let alerts: Vec<Value> =
        guard.stop().unwrap().into_iter().filter(|a| a["output_fields"]["jupyterhub.user"] == user.as_str()).collect();
    let want = |name: &str| results.get(name).map(String::as_str).unwrap_or("missing");
    for denied in [
        "metadata-tcp4",
        "alibaba-metadata",
        "private-tcp4",
        "metadata-tcp6",
        "metadata-v4mapped",
        "private-udp-sendto",
        "private-udp-connect",
        "ping4",
        "ping6",
        "raw-icmp",
    ] {
        assert_eq!(want(denied), "EPERM", "{denied}: {results:?}");
    }
    // No cgroup hook can refuse a packet socket (it is not an inet socket): reported only.
    assert_eq!(want("sniffer"), "ok", "{results:?}");
    for allowed in ["public-tcp4", "public-tcp6", "dns-udp", "loopback"] {
        assert_eq!(want(allowed), "ok", "{allowed}: {results:?}");
    }
    assert!(ur.iter().all(|r| r.contains("not permitted")), "io_uring connects are refused too: {ur:?}");
    assert_eq!(ur_ok, "ok");
    let denied: Vec<&Value> = alerts.iter().filter(|a| a["output_fields"]["guard.action"] == "denied").collect();
    assert!(denied.len() >= 5, "{alerts:#?}");
    assert!(alert_for(&alerts, "notebook.cloud_metadata_access", "169.254.169.254:80").is_some());
    // One alert per socket, saying what happened to it.
    let sockets = |family: &str| {
        alerts
            .iter()
            .filter(|a| a["rule"] == "notebook.packet_socket" && a["output_fields"]["fd.family"] == family)
            .map(|a| a["output_fields"]["guard.action"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!((sockets("AF_INET"), sockets("AF_PACKET")), (vec!["denied"], vec!["alert"]), "{alerts:#?}");
    let pings = alerts.iter().filter(|a| a["rule"] == "notebook.icmp_socket").collect::<Vec<_>>();
    assert!(
        pings.len() == 2 && pings.iter().all(|a| a["output_fields"]["guard.action"] == "denied"),
        "ICMP sockets refused and alerted: {pings:#?}"
    );
}

#[test]
fn a_real_kernel_is_refused_and_repeats_aggregate() {
    privileged!();
    let net = TestNet::new().unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let venv = test_python().parent().unwrap().display().to_string();
    let p = format!("{}python:\n  interpreters: [\"{venv}/python*\"]\n", policy(Some(&user)));
    let guard = GuardProcess::start(&p, &[]).unwrap();
    let cells = [
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://169.254.169.254/latest/meta-data/', timeout=2)\nexcept Exception as e:\n    print('urllib', type(e).__name__, getattr(e, 'reason', e))",
        "import http.client\ntry:\n    c = http.client.HTTPConnection('10.0.0.5', 80, timeout=2)\n    c.request('GET', '/')\nexcept Exception as e:\n    print('http.client', type(e).__name__)",
        "import socket\nfor _ in range(5):\n    try:\n        socket.create_connection(('10.0.0.5', 8080), timeout=2)\n    except OSError as e:\n        print('repeat', e.errno)",
        "import socket\ntry:\n    socket.create_connection(('203.0.113.10', 443), timeout=2)\nexcept ConnectionRefusedError:\n    print('public reached')",
        "print('alive', 1 + 1)",
    ];
    let results = run_notebook_in(&cg, Some(&net.notebook), "egress.ipynb", "tok-abcdef0123456789", &cells).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alerts: Vec<Value> =
        guard.stop().unwrap().into_iter().filter(|a| a["output_fields"]["jupyterhub.user"] == user.as_str()).collect();
    let out: Vec<&str> = results.iter().map(|r| r.stdout.as_str()).collect();
    assert!(out[0].contains("Operation not permitted") || out[0].contains("PermissionError"), "{results:?}");
    assert!(out[1].contains("PermissionError"), "{results:?}");
    assert_eq!(out[2].matches("repeat 1").count(), 5, "EPERM five times: {results:?}");
    assert!(out[3].contains("public reached"), "{results:?}");
    assert_eq!(out[4].trim(), "alive 2");
    let md = alert_for(&alerts, "notebook.cloud_metadata_access", "169.254.169.254:80").expect("metadata alert");
    assert_eq!(md["output_fields"]["guard.action"], "denied");
    assert_eq!(md["output_fields"]["notebook.path"], "egress.ipynb");
    assert!(md["output_fields"]["proc.cmdline"].as_str().unwrap().contains("ipykernel_launcher"));
    // Five refused attempts to one destination: the first alert at once, then one summary.
    let repeats: Vec<&Value> = alerts.iter().filter(|a| a["output_fields"]["fd.name"] == "10.0.0.5:8080").collect();
    assert_eq!(repeats.len(), 2, "{repeats:#?}");
    assert_eq!(repeats[1]["output_fields"]["guard.count"], 4);
}

/// Egress hooks are pinned like the exec programs: with the agent gone (a crash, a rolling
/// update), forbidden destinations stay refused; the next agent replaces the hooks rather
/// than stacking a second set; `cleanup` (here: `stop`) takes them off.
#[test]
fn egress_enforcement_holds_while_the_agent_restarts() {
    privileged!();
    let net = TestNet::new().unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let verdicts = || {
        let r = run_client(&net, &cg);
        ["metadata-tcp4", "private-udp-sendto", "ping4", "public-tcp4"].map(|n| r[n].clone())
    };
    let enforced = ["EPERM", "EPERM", "EPERM", "ok"].map(String::from);
    let a = GuardProcess::start(&policy(Some(&user)), &[]).unwrap();
    let pins = a.pin_dir.clone();
    assert_eq!(verdicts(), enforced, "under the agent:\n{}", a.log());
    let a_ids = a.program_ids();
    a.stop_keep_pins().unwrap();
    assert_eq!(verdicts(), enforced, "the agent is gone, egress enforcement is not");

    let b = GuardProcess::start_pinned(&policy(Some(&user)), &[], &[], pins).unwrap();
    assert!(b.log().contains("adopting"), "{}", b.log());
    assert_eq!(verdicts(), enforced, "under the adopting agent:\n{}", b.log());
    let loaded: std::collections::HashSet<u32> =
        aya::programs::loaded_programs().filter_map(|p| p.ok()).map(|p| p.id()).collect();
    assert!(a_ids.iter().all(|id| !loaded.contains(id)), "the old agent's hooks are replaced, not stacked");
    b.stop().unwrap();
    assert_eq!(verdicts(), ["ok", "ok", "ok", "ok"].map(String::from), "after cleanup nothing is refused");
}

/// Enforce mode must not cut a notebook off from its hub (Zero to JupyterHub's hub API is a
/// ClusterIP in a private range, which the default policy refuses): the endpoint of the
/// server's `JUPYTERHUB_API_URL` stays reachable in every mode, on its port only.
#[test]
fn a_notebook_reaches_its_hub_at_a_private_address_in_every_mode() {
    privileged!();
    use guard_tests::{
        pod::open_session,
        unit::{jupyter_server_env, unit_policy, Unit},
    };
    let net = TestNet::new().unwrap();
    // The hub stand-in: an HTTP server in the world namespace at 10.0.0.5:8081.
    let site = TempDir::new("hub-api").unwrap();
    std::fs::create_dir_all(site.0.join("hub/api")).unwrap();
    std::fs::write(site.0.join("hub/api/index.html"), "{\"version\": \"5.0.0\"}").unwrap();
    let mut hub = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.world,
            "python3",
            "-m",
            "http.server",
            "8081",
            "--bind",
            "10.0.0.5",
            "--directory",
        ])
        .arg(&site.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (enforced, monitored) = (Unit::new_user(), Unit::new_user());
    let g = GuardProcess::start(&unit_policy(Some(&enforced)), &[]).unwrap();
    let cells = [
        "import os, urllib.request\nprint('hub', urllib.request.urlopen(os.environ['JUPYTERHUB_API_URL'], timeout=10).status)",
        "import socket\ns = socket.socket()\ns.settimeout(5)\ntry:\n    s.connect(('10.0.0.5', 5432))\n    print('other', 'connected')\nexcept OSError as e:\n    print('other', e.errno)\n# The refusal's notice comes while the cell still runs.\nimport time\ntime.sleep(1)",
    ];
    let api = "http://10.0.0.5:8081/hub/api/";
    let mut results = Vec::new();
    for (user, port) in [(&enforced, 8896u16), (&monitored, 8897)] {
        let dir = TempDir::new("hub-reach").unwrap();
        let unit =
            jupyter_server_env(user, port, "hub-reach-token", &net.notebook, &dir, &[("JUPYTERHUB_API_URL", api)]);
        let spec = json!({
            "url": format!("http://127.0.0.1:{port}"), "token": "hub-reach-token", "notebook": "n.ipynb",
            "cells": cells, "runtime_dir": dir.0.join("runtime"),
        });
        let (_, out) = open_session(&net.notebook, spec, &dir.0).unwrap_or_else(|e| panic!("{e:#}\n{}", unit.log()));
        results.push((user.clone(), out));
    }
    let log = g.log();
    let alerts = g.stop().unwrap();
    let _ = hub.kill();
    let _ = hub.wait();
    for (user, out) in &results {
        let enforce = *user == enforced;
        assert_eq!(out[0].stdout.trim(), "hub 200", "{user}: {out:?}\n{log}");
        // Another port of the same private host is still another user's pod to the policy;
        // when it is refused, the cell also says why.
        let notices = &out[1].notices;
        assert_eq!(
            out[1].stdout.trim(),
            if enforce { "other 1" } else { "other 111" },
            "{user} (EPERM 1 when enforced, refused 111 when not)"
        );
        let told = notices.iter().any(|n| n.contains("connecting to 10.0.0.5:5432 (notebook.unexpected_egress)"));
        assert_eq!(told, enforce, "{user}: the notice of a refused connect, and only then: {notices:?}");
        let mine: Vec<&Value> = alerts
            .iter()
            .filter(|a| field(a, "jupyterhub.user") == user.as_str())
            .filter(|a| a["rule"].as_str().is_some_and(|r| r.starts_with("notebook.")))
            .collect();
        assert!(mine.iter().all(|a| field(a, "fd.name") != "10.0.0.5:8081"), "{user}: the hub alerted: {mine:#?}");
        assert!(mine.iter().any(|a| field(a, "fd.name") == "10.0.0.5:5432"), "{user}: {mine:#?}");
    }
    assert!(log.contains("hub endpoint: always reachable"), "{log}");
}
