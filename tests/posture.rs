//! Posture findings in real notebook pods (runc, a real Jupyter server whose sessions API
//! starts the kernels): a pod running as root, with a service-account token, no seccomp
//! filter, privilege escalation allowed and kernels on a TCP transport bound to all addresses
//! raises each finding once, however many kernels it starts; a pod shaped as it should be
//! (uid 1000, a seccomp filter, no_new_privs, no token, kernels on loopback) raises none.
//! `guard posture` lists the same for the node.

use std::time::Duration;

use guard_tests::{
    fake_kube::FakeKube,
    pod::{Driver, Pod, PodOptions},
    *,
};
use serde_json::{json, Value};

const FINDINGS: &[&str] = &[
    "posture.kernel_tcp_transport",
    "posture.root_notebook",
    "posture.service_account_token",
    "posture.no_seccomp",
    "posture.no_new_privs",
];

#[test]
fn posture_findings_are_raised_once_per_notebook_and_never_for_a_clean_one() {
    privileged!();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("posture").unwrap();
    let clean = Pod::new("jupyter-rita---6a7b8c9d", "rita", Driver::Systemd).unwrap();
    let exposed = Pod::new("jupyter-sam---7b8c9d0e", "sam", Driver::Cgroupfs).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![clean.manifest(), exposed.manifest()]));
    let g = api.agent(&dir, "");
    // A filter that allows what a notebook does (Seccomp: 2 in the container's status).
    let filter = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]});
    clean.start_opts(&net.notebook, &PodOptions { seccomp: Some(filter), ..PodOptions::default() }).unwrap();
    let bad = PodOptions {
        root: true,
        privilege_escalation: true,
        service_account_token: true,
        server_args: vec!["--KernelManager.ip=0.0.0.0".into()],
        ..PodOptions::default()
    };
    exposed.start_opts(&net.notebook, &bad).unwrap_or_else(|e| panic!("{e:#}"));
    for pod in [&clean, &exposed] {
        // Two notebooks, the second left open (its kernel running for `guard posture`).
        for nb in ["a.ipynb", "b.ipynb"] {
            let cells = ["import os\nprint('uid', os.getuid())"];
            let run = match nb {
                "a.ipynb" => pod.run_cells(&net.notebook, nb, &cells),
                _ => pod.run_cells_open(&net.notebook, nb, &cells),
            };
            let (_, r) = run.unwrap_or_else(|e| panic!("{e:#}"));
            let want = if std::ptr::eq(pod, &exposed) { "uid 0" } else { "uid 1000" };
            assert_eq!(r[0].stdout.trim(), want, "{r:?}");
        }
    }
    // The node's posture, asked while the notebooks run.
    let out = std::process::Command::new(guard_bin()).args(["posture", "--format", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let table = std::process::Command::new(guard_bin()).arg("posture").output().unwrap();
    println!("{}", String::from_utf8_lossy(&table.stdout));
    std::thread::sleep(Duration::from_millis(300));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let posture: Vec<&Value> =
        alerts.iter().filter(|a| a["rule"].as_str().is_some_and(|r| r.starts_with("posture."))).collect();
    for a in &posture {
        println!("{}", a["output"].as_str().unwrap_or(""));
    }
    assert!(
        !posture.iter().any(|a| field(a, "k8s.pod.name") == clean.name.as_str()),
        "the clean notebook raised findings:\n{posture:#?}"
    );
    for rule in FINDINGS {
        let of: Vec<&&Value> = posture
            .iter()
            .filter(|a| a["rule"] == *rule && field(a, "k8s.pod.name") == exposed.name.as_str())
            .collect();
        assert_eq!(of.len(), 1, "{rule}: once for the notebook, whatever its kernels:\n{posture:#?}\n{log}");
        let a = of[0];
        assert_eq!(a["priority"], "Notice");
        assert_eq!(field(a, "jupyterhub.user"), "sam");
        assert!(field(a, "posture.fix").as_str().is_some_and(|f| !f.is_empty()), "{a:#}");
    }
    assert_eq!(posture.len(), FINDINGS.len(), "{posture:#?}");
    assert!(
        field(posture.iter().find(|a| a["rule"] == "posture.kernel_tcp_transport").unwrap(), "posture.detail")
            .as_str()
            .is_some_and(|d| d.contains("tcp://0.0.0.0")),
        "{posture:#?}"
    );
    // `guard posture`: the same findings for the exposed notebook, none for the clean one.
    let listed = |user: &str| -> Vec<&str> {
        let mut v: Vec<&str> = rows
            .iter()
            .filter(|r| r["notebook"].as_str().is_some_and(|n| n.starts_with(&format!("{user}, "))))
            .filter_map(|r| r["rule"].as_str())
            .collect();
        v.sort();
        v
    };
    let mut want = FINDINGS.to_vec();
    want.sort();
    assert_eq!(listed("sam"), want, "{rows:#?}");
    assert!(listed("rita").is_empty(), "{rows:#?}");
    assert!(
        rows.iter().any(|r| r["notebook"].as_str().is_some_and(|n| n.contains(&format!("pod {}", exposed.name)))),
        "{rows:#?}"
    );
    drop((clean, exposed));
}
