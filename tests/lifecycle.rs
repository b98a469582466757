//! Notebook lifecycles the guard must never go blind in: a server restarted at once (its unit's
//! cgroup removed and made again at the same path, as `systemctl restart` and the hub's stop
//! and start do) or after a pause, with the agent running, stopped, or adopting the pinned
//! state. Servers are started by a systemd stand-in (`unitd`) inside their unit, as uid 1000,
//! in a network namespace of the test's own.

use std::{path::Path, time::Duration};

use guard_tests::{
    unit::{unit_policy, Unit},
    *,
};
use serde_json::Value;

/// A notebook server stand-in: once its incarnation's `go-N` file appears it runs a shell
/// command through `os.system` and connects to a private address (refused by the default
/// egress policy), prints what happened, and stays up.
const SERVER: &str = r#"
import os, socket, sys, time
n = os.environ["NBG_INCARNATION"]
go = os.path.join(sys.argv[1], "go-" + n)
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.01)
rc = os.system("/bin/echo EXEC-RAN")
try:
    socket.create_connection(("10.0.0.5", 80), timeout=3).close()
    res = "connected"
except OSError as e:
    res = "errno %s" % e.errno
print("inc %s rc %s connect %s" % (n, rc, res), flush=True)
time.sleep(600)
"#;

fn go(dir: &TempDir, n: usize) {
    std::fs::write(dir.0.join(format!("go-{n}")), "").unwrap();
}

/// Waits until the agent has placed the unit's current incarnation (its first scan or exec).
fn wait_placed(guard: &GuardProcess, unit: &Unit) {
    let id = format!("id={}", unit.ids.last().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !guard.log().lines().any(|l| l.contains(unit.rel.to_str().unwrap()) && l.contains(&id)) {
        assert!(std::time::Instant::now() < deadline, "the unit was never placed:\n{}", guard.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Once `agent` has placed the unit, its restart as incarnation `n` is enforced: the command is
/// killed and the connect refused.
fn restarted_incarnation_is_enforced(agent: &GuardProcess, unit: &mut Unit, dir: &TempDir, n: usize) {
    wait_placed(agent, unit);
    go(dir, n);
    unit.restart(false).unwrap();
    let line = unit.wait_for(&format!("inc {n} "), Duration::from_secs(20)).unwrap();
    assert_eq!(line, format!("inc {n} rc 9 connect errno 1"), "{}", agent.log());
}

/// The agent's `guard.error` alert whose `key` is `value`, within 10 s.
fn wait_for_error(agent: &GuardProcess, key: &str, value: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = agent.alerts().into_iter().find(|x| x["rule"] == "guard.error" && field(x, key) == value) {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "no guard.error with {key}={value}:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unit, and the directory its server looks for its go files in.
fn start_unit(user: &str, net: &TestNet) -> (Unit, TempDir) {
    let python = "/usr/bin/python3";
    assert!(Path::new(python).exists(), "Debian's python3 is needed for uid-1000 notebooks");
    let dir = TempDir::new("go").unwrap();
    let unit = Unit::start(user, &[python, "-c", SERVER, dir.0.to_str().unwrap()], Some(&net.notebook)).unwrap();
    (unit, dir)
}

/// An agent enforcing a fresh user's notebook, whose unit is up and placed and whose first
/// incarnation's command was killed and connect refused.
struct Enforced {
    net: TestNet,
    user: String,
    agent: GuardProcess,
    unit: Unit,
    dir: TempDir,
}

fn enforced_first_incarnation() -> Enforced {
    let net = TestNet::new().unwrap();
    let user = Unit::new_user();
    let agent = GuardProcess::start(&unit_policy(Some(&user)), &[]).unwrap();
    let (unit, dir) = start_unit(&user, &net);
    wait_placed(&agent, &unit);
    go(&dir, 0);
    let line = unit.wait_for("inc 0 ", Duration::from_secs(20)).unwrap();
    assert_eq!(line, "inc 0 rc 9 connect errno 1", "first incarnation:\n{}", agent.log());
    Enforced { net, user, agent, unit, dir }
}

#[test]
fn every_incarnation_of_a_restarted_server_is_enforced_with_or_without_the_agent() {
    privileged!();
    let Enforced { net: _net, user, agent: a, mut unit, dir } = enforced_first_incarnation();
    let pins = a.pin_dir.clone();
    // Restarted at once (twice) and after a pause: each new incarnation's first exec is its
    // server's, and that server runs the forbidden command straight away.
    for (n, pause) in [(1, false), (2, false), (3, true)] {
        go(&dir, n);
        unit.restart(pause).unwrap();
        let line = unit.wait_for(&format!("inc {n} "), Duration::from_secs(20)).unwrap();
        assert_eq!(line, format!("inc {n} rc 9 connect errno 1"), "incarnation {n}:\n{}", unit.log());
    }
    std::thread::sleep(Duration::from_millis(300));
    // The agent is killed (a crash, an OOM kill): nothing is cleaned up. With no agent at
    // all, the kernel still gives the new incarnation its enforcement.
    let alerts = a.kill_keep_pins().unwrap();
    go(&dir, 4);
    unit.restart(false).unwrap();
    let line = unit.wait_for("inc 4 ", Duration::from_secs(20)).unwrap();
    assert_eq!(line, "inc 4 rc 9 connect errno 1", "restarted while no agent ran:\n{}", unit.log());
    // What stays enforced is there to see: the unit's cgroup by path and user, from the pins.
    let status = std::process::Command::new(guard_bin()).arg("status").arg("--pin-dir").arg(&pins).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}{}", String::from_utf8_lossy(&status.stderr));
    let row = text.lines().find(|l| l.ends_with(unit.rel.to_str().unwrap())).unwrap_or_else(|| panic!("{text}"));
    assert!(row.starts_with("enforce  enforce") && row.contains(&format!("user {user} (TLJH unit)")), "{row}");
    // An agent adopting the pinned state keeps doing it.
    let b = GuardProcess::start_pinned(&unit_policy(Some(&user)), &[], &[], pins).unwrap();
    go(&dir, 5);
    unit.restart(false).unwrap();
    let line = unit.wait_for("inc 5 ", Duration::from_secs(20)).unwrap();
    assert_eq!(line, "inc 5 rc 9 connect errno 1", "restarted under the adopting agent:\n{}", b.log());
    let adopted = b.stop().unwrap();
    // Control: with the guard gone the same server runs its command and reaches the address.
    go(&dir, 6);
    unit.restart(false).unwrap();
    let line = unit.wait_for("inc 6 ", Duration::from_secs(20)).unwrap();
    assert_eq!(line, "inc 6 rc 0 connect errno 111", "after cleanup nothing is judged:\n{}", unit.log());
    assert_eq!(unit.log().matches("EXEC-RAN").count(), 1, "only the unguarded run printed:\n{}", unit.log());

    // Each guarded incarnation's kill is reported under its own cgroup id, with the user.
    let killed = |alerts: &[Value], id: u64| {
        alerts.iter().any(|a| {
            a["rule"] == "notebook.non_python_exec"
                && field(a, "guard.action") == "killed"
                && field(a, "container.cgroup_id") == id
                && field(a, "jupyterhub.user") == user.as_str()
        })
    };
    for (n, id) in unit.ids[..4].iter().enumerate() {
        assert!(killed(&alerts, *id), "incarnation {n} (cgroup {id}) has no kill alert:\n{alerts:#?}");
    }
    assert!(killed(&adopted, unit.ids[5]), "the adopting agent reported incarnation 5:\n{adopted:#?}");
    let denied =
        alerts.iter().filter(|a| field(a, "guard.action") == "denied" && field(a, "jupyterhub.user") == user.as_str());
    assert!(denied.count() >= 4, "egress refusals reported:\n{alerts:#?}");
}

#[test]
fn every_incarnation_of_a_restarted_server_is_reported_on_its_own() {
    privileged!();
    let net = TestNet::new().unwrap();
    let user = Unit::new_user();
    let g = GuardProcess::start(&unit_policy(None), &[]).unwrap();
    let (mut unit, dir) = start_unit(&user, &net);
    wait_placed(&g, &unit);
    go(&dir, 0);
    unit.wait_for("inc 0 ", Duration::from_secs(20)).unwrap();
    for (n, pause) in [(1, false), (2, false), (3, true)] {
        go(&dir, n);
        unit.restart(pause).unwrap();
        let line = unit.wait_for(&format!("inc {n} "), Duration::from_secs(20)).unwrap();
        assert_eq!(line, format!("inc {n} rc 0 connect errno 111"), "monitor mode lets it run:\n{}", unit.log());
    }
    std::thread::sleep(Duration::from_millis(500));
    let alerts = g.stop().unwrap();
    let mine: Vec<&Value> = alerts.iter().filter(|a| field(a, "jupyterhub.user") == user.as_str()).collect();
    // The same command in every incarnation: not folded into one alert, one per incarnation.
    for rule in ["notebook.non_python_exec", "notebook.unexpected_egress"] {
        let mut ids: Vec<u64> = mine
            .iter()
            .filter(|a| a["rule"] == rule && field(a, "proc.exepath") != "/bin/echo")
            .filter_map(|a| field(a, "container.cgroup_id").as_u64())
            .collect();
        ids.sort_unstable();
        let mut want = unit.ids.clone();
        want.sort_unstable();
        assert_eq!(ids, want, "{rule}: one alert per incarnation:\n{mine:#?}");
    }
}

/// A Python script named `name` (`#!/usr/bin/python3`), for servers started by a test.
fn script(dir: &TempDir, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.0.join(name);
    std::fs::write(&path, format!("#!/usr/bin/python3\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Runs a command, reports what it printed.
const PROBE: &str = r#"
import os, socket, subprocess, sys, time
time.sleep(float(sys.argv[1]))
r = subprocess.run(["/bin/echo", "EXEC-RAN"], capture_output=True, text=True)
try:
    socket.create_connection(("10.0.0.5", 80), timeout=3).close()
    res = "connected"
except OSError as e:
    res = "errno %s" % e.errno
print("rc %s out %s connect %s" % (r.returncode, r.stdout.strip() or "-", res), flush=True)
"#;

#[test]
fn a_local_process_spawner_notebook_is_enforced_by_process_and_the_hub_is_not() {
    privileged!();
    // LocalProcessSpawner: the hub and every user's server share the hub's cgroup.
    let net = TestNet::new().unwrap();
    let hub = TestCgroup::new_under(Path::new("system.slice"), "jupyterhub-local").unwrap();
    let user = Unit::new_user();
    let g = GuardProcess::start(&unit_policy(Some(&user)), &[]).unwrap();
    let dir = TempDir::new("local").unwrap();
    let server = script(&dir, "jupyterhub-singleuser", PROBE);
    let hub_proc = script(&dir, "jupyterhub", PROBE);
    let user_env = format!("JUPYTERHUB_USER={user}");
    // The server waits a moment, as a real one does before it starts kernels (a second: the
    // agent places it when it sees its exec, and 0.3 s was once too little on a loaded CI).
    let out = net.run_in(&hub, &["/usr/bin/env", &user_env, &server, "1.0"]).unwrap();
    assert_eq!(out.trim(), "rc -9 out - connect errno 1", "the notebook's exec and connect:\n{}", g.log());
    let out = net.run_in(&hub, &[&hub_proc, "0"]).unwrap();
    assert_eq!(out.trim(), "rc 0 out EXEC-RAN connect errno 111", "the hub itself is not judged");
    std::thread::sleep(Duration::from_millis(300));
    let alerts = g.stop().unwrap();
    let mine: Vec<&Value> = alerts.iter().filter(|a| field(a, "jupyterhub.user") == user.as_str()).collect();
    let killed = mine.iter().find(|a| field(a, "guard.action") == "killed").unwrap_or_else(|| panic!("{mine:#?}"));
    assert_eq!(field(killed, "jupyterhub.source"), "localprocessspawner");
    assert_eq!(field(killed, "proc.exepath"), "/bin/echo");
    assert!(mine.iter().any(|a| field(a, "guard.action") == "denied"), "egress refusal reported:\n{mine:#?}");
}

#[test]
fn an_agent_meeting_pinned_maps_of_another_layout_replaces_them_and_enforces() {
    privileged!();
    // An upgrade (or a downgrade) across a change of the pinned maps' layout: the maps are
    // not adopted in the wrong shape; the new agent replaces them and enforces what it finds.
    let Enforced { net: _net, user, agent: a, mut unit, dir } = enforced_first_incarnation();
    let pins = a.pin_dir.clone();
    a.stop_keep_pins().unwrap();
    // What an agent of layout 1 would have left.
    let current = pins.join(format!("maps-v{}", guard_abi::PIN_LAYOUT));
    let older = pins.join("maps-v1");
    std::fs::rename(&current, &older).unwrap();
    let b = GuardProcess::start_pinned(&unit_policy(Some(&user)), &[], &[], pins.clone()).unwrap();
    assert!(b.log().contains("another agent version's layout"), "{}", b.log());
    assert!(!older.exists() && current.exists(), "the other layout's maps are unpinned, this one's pinned");
    restarted_incarnation_is_enforced(&b, &mut unit, &dir, 1);
    b.stop().unwrap();
}

#[test]
fn a_full_kernel_map_is_alerted_and_the_agent_keeps_guarding() {
    privileged!();
    // One notebook cgroup's room: the enforcement marker takes it, so enforcing the user's
    // notebook cannot be written. The agent says so, naming the map and the flag that grows it,
    // and goes on judging that notebook's execs (`--watch-all`: the kernel reports every
    // cgroup, so the watch list is not the map that fills).
    let net = TestNet::new().unwrap();
    let user = Unit::new_user();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let args = ["--map-size", "cgroups=1", "--watch-all", "--listen", &addr];
    let a = GuardProcess::start(&unit_policy(Some(&user)), &args).unwrap();
    let (mut unit, dir) = start_unit(&user, &net);
    let full = wait_for_error(&a, "guard.map", "ENFORCED");
    // Placed from its exec, or from the scan that found its unit first: either stage.
    let stage = field(&full, "guard.stage").as_str().unwrap_or("");
    assert!(["placement", "discovery"].contains(&stage), "{full:#}");
    assert_eq!(field(&full, "guard.map_full"), true);
    assert!(full["output"].as_str().unwrap().contains("--map-size cgroups="), "{full:#}");
    go(&dir, 0);
    let line = unit.wait_for("inc 0 ", Duration::from_secs(20)).unwrap();
    assert!(line.starts_with("inc 0 rc 0 "), "not enforced (the map is full), so the command ran: {line}");
    std::thread::sleep(Duration::from_millis(500));
    let (_, metrics) = http_get(&addr, "/metrics");
    let placement = metrics.lines().find(|l| l.starts_with("guard_errors_total{stage=\"placement\"}")).unwrap();
    assert_ne!(placement, "guard_errors_total{stage=\"placement\"} 0", "{metrics}");
    let pins = a.pin_dir.clone();
    let alerts = a.stop_keep_pins().unwrap();
    assert!(
        alerts.iter().any(|x| field(x, "jupyterhub.user") == user.as_str()
            && field(x, "guard.action") == "alert"
            && field(x, "proc.exepath") == "/bin/echo"),
        "the notebook's exec is still judged after the error:\n{alerts:#?}"
    );
    // The next agent, at the default size, makes the small pinned maps anew and enforces.
    let b = GuardProcess::start_pinned(&unit_policy(Some(&user)), &[], &[], pins).unwrap();
    assert!(b.log().contains("pinned map resized"), "{}", b.log());
    restarted_incarnation_is_enforced(&b, &mut unit, &dir, 1);
    b.stop().unwrap();
}

/// A server that, once its `go-N` file appears, forks children that stay up a while.
const FORKER: &str = r#"
import os, sys, time
go = os.path.join(sys.argv[1], "go-" + os.environ["NBG_INCARNATION"])
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.01)
for i in range(16):
    if os.fork() == 0:
        time.sleep(30)
        os._exit(0)
print("forked", flush=True)
time.sleep(600)
"#;

#[test]
fn a_kernel_map_the_programs_fill_is_alerted() {
    privileged!();
    // Room for four marked processes. Once the notebook is enforced its Python is marked, and
    // what it forks inherits the mark in the kernel, with no agent in the loop: past the room
    // those writes fail there. The agent must say so, not leave children unmarked in silence.
    let net = TestNet::new().unwrap();
    let user = Unit::new_user();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let a = GuardProcess::start(&unit_policy(Some(&user)), &["--map-size", "marks=4", "--listen", &addr]).unwrap();
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metrics.contains("guard_errors_total{stage=\"kernel_maps\"} 0"), "exported at zero:\n{metrics}");
    let dir = TempDir::new("go").unwrap();
    let unit =
        Unit::start(&user, &["/usr/bin/python3", "-c", FORKER, dir.0.to_str().unwrap()], Some(&net.notebook)).unwrap();
    wait_placed(&a, &unit);
    go(&dir, 0);
    unit.wait_for("forked", Duration::from_secs(20)).unwrap();
    let full = wait_for_error(&a, "guard.stage", "kernel_maps");
    assert_eq!(field(&full, "guard.map"), "MARKS", "{full:#}");
    assert_eq!(field(&full, "guard.map_full"), true);
    assert!(full["output"].as_str().unwrap().contains("--map-size marks="), "{full:#}");
    let (_, metrics) = http_get(&addr, "/metrics");
    let line = metrics.lines().find(|l| l.starts_with("guard_errors_total{stage=\"kernel_maps\"}")).unwrap();
    assert_ne!(line, "guard_errors_total{stage=\"kernel_maps\"} 0", "{metrics}");
    a.stop().unwrap();
}
