//! Attribution where the cgroup alone does not say whose notebook it is: DockerSpawner (a
//! `system.slice/docker-<id>.scope` whose processes carry `JUPYTERHUB_USER`) and
//! LocalProcessSpawner (servers in the hub's own cgroup). Each server runs as uid 1000 for the
//! whole test, as a real one does, and runs what the test asks of it.

use std::{
    io::{BufRead, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use guard_tests::*;
use serde_json::Value;

/// A notebook server in `cgroup`, answering one line per request.
struct Server {
    child: Child,
    stdin: ChildStdin,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    cgroup: TestCgroup,
    _dir: TempDir,
}

/// `curl` runs curl; `curl-noenv` runs it with an empty environment (`env -i`).
const SERVER: &str = "import subprocess, sys\nfor line in sys.stdin:\n    env = {} if line.strip() == 'curl-noenv' else None\n    print(subprocess.run(['/usr/bin/curl', '--version'], capture_output=True, env=env).returncode, flush=True)\n";

impl Server {
    /// Starts `jupyterhub-singleuser` the way a spawner does: the process joins its cgroup,
    /// then execs (dropping to uid 1000) with the spawner's environment.
    fn start(cgroup: TestCgroup, user: &str) -> Self {
        let dir = TempDir::new("spawner").unwrap();
        let script = dir.0.join("jupyterhub-singleuser");
        std::fs::write(&script, SERVER).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}; exec setpriv --reuid=1000 --regid=1000 --clear-groups {} {}",
                cgroup.path.join("cgroup.procs").display(),
                test_python().display(),
                script.display()
            ))
            .env_clear()
            .envs([("PATH", "/usr/bin:/bin"), ("JUPYTERHUB_USER", user), ("JUPYTERHUB_SERVER_NAME", "gpu")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Self { child, stdin, out, cgroup, _dir: dir };
        // The server is up (its interpreter loaded) once it has answered.
        assert_eq!(s.run("curl"), "0");
        s
    }

    /// A DockerSpawner container: a fresh `docker-<id>.scope` and its server.
    fn container(user: &str) -> (Self, String) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!("{:032x}{:032x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed) + 0xd0c);
        let cg = TestCgroup::exact(Path::new("system.slice"), &format!("docker-{id}.scope")).unwrap();
        (Self::start(cg, user), id)
    }

    fn run(&mut self, what: &str) -> String {
        writeln!(self.stdin, "{what}").unwrap();
        self.out.next().expect("the server answers").unwrap().trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guard's `notebook.network_tool` alert for `user` (10 s at most).
fn network_tool(guard: &GuardProcess, user: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alerts = guard.alerts();
        let found = alerts
            .iter()
            .find(|a| field(a, "jupyterhub.user") == user && a["rule"] == "notebook.network_tool")
            .cloned();
        if let Some(a) = found {
            return a;
        }
        assert!(Instant::now() < deadline, "no alert for {user}:\n{alerts:#?}\n{}", guard.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_container(a: &Value, id: &str) {
    assert_eq!(field(a, "jupyterhub.source"), "dockerspawner");
    assert_eq!(field(a, "jupyterhub.server"), "gpu");
    assert_eq!(field(a, "container.id"), id);
    assert_eq!(field(a, "user.uid"), 1000);
}

#[test]
fn a_docker_spawner_container_is_attributed_to_its_user() {
    privileged!();
    let guard = GuardProcess::start("mode: monitor\n", &[]).unwrap();
    let (mut c, id) = Server::container("dave");
    assert_eq!(c.run("curl"), "0");
    assert_container(&network_tool(&guard, "dave"), &id);
}

#[test]
fn a_container_running_before_the_guard_is_known_by_its_server() {
    privileged!();
    // The container was there first: the guard's first event from it is an exec with an empty
    // environment. The container is still the server's, named by the server's environment.
    let (mut c, id) = Server::container("frank");
    let guard = GuardProcess::start("mode: monitor\n", &[]).unwrap();
    assert_eq!(c.run("curl-noenv"), "0");
    let a = network_tool(&guard, "frank");
    assert_container(&a, &id);
    assert!(field(&a, "proc.cmdline").as_str().is_some_and(|s| s == "/usr/bin/curl --version"), "{a:#}");
}

#[test]
fn a_local_process_spawner_server_is_attributed_in_the_hubs_cgroup() {
    privileged!();
    let guard = GuardProcess::start("mode: monitor\n", &[]).unwrap();
    // The server runs in the hub's own cgroup; its environment names the user.
    let hub = TestCgroup::new_under(Path::new("system.slice"), "jupyterhub-test").unwrap();
    let mut s = Server::start(hub, "carol");
    assert_eq!(s.run("curl"), "0");
    let a = network_tool(&guard, "carol");
    assert_eq!(field(&a, "jupyterhub.source"), "localprocessspawner");
    assert_eq!(field(&a, "jupyterhub.server"), "gpu");
    assert_eq!(field(&a, "container.cgroup"), s.cgroup.rel.to_str().unwrap());
    assert_eq!(field(&a, "user.uid"), 1000);
}

#[test]
fn a_local_process_spawner_server_running_before_the_guard_is_known() {
    privileged!();
    let hub = TestCgroup::new_under(Path::new("system.slice"), "jupyterhub-test").unwrap();
    let mut s = Server::start(hub, "grace");
    let guard = GuardProcess::start("mode: monitor\n", &[]).unwrap();
    // What the server runs with an empty environment is still the server's.
    assert_eq!(s.run("curl-noenv"), "0");
    let a = network_tool(&guard, "grace");
    assert_eq!(field(&a, "jupyterhub.source"), "localprocessspawner");
    assert_eq!(field(&a, "container.cgroup"), s.cgroup.rel.to_str().unwrap());
}
