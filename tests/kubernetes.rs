//! Kubernetes discovery against a fake API server serving real-shaped Z2JH pods, and pod
//! attribution for processes in real cgroups laid out the way kubelet lays them out.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use guard::discovery::kube::{watch_pods, KubeOptions, PodCache, PodChange};
use guard_tests::{fake_kube::*, *};
use serde_json::Value;

const ALICE: &str = "3bc51062-1f2e-4c4d-9a8b-0123456789ab";
const NAMED: &str = "b4c9a289-aaaa-4c4d-9a8b-0123456789ab";
const BOB: &str = "c0ffee00-bbbb-4c4d-9a8b-0123456789ab";
const PULLER: &str = "dddddddd-dddd-4ddd-9ddd-dddddddddddd";
const HUB: &str = "eeeeeeee-eeee-4eee-9eee-eeeeeeeeeeee";

fn ctr(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

fn z2jh_pods() -> Vec<Value> {
    vec![
        notebook_pod("jupyter-alice---3bc51062", ALICE, "Alice", "", &ctr(1), &ctr(2)),
        notebook_pod("jupyter-user-example-com---b4c9a289--gpu", NAMED, "user@example.com", "gpu", &ctr(3), &ctr(4)),
        chart_pod("continuous-image-puller-x7k2p", PULLER, "continuous-image-puller"),
        chart_pod("hub-5d9f8c7b6-abcde", HUB, "hub"),
    ]
}

fn view(cache: &PodCache) -> BTreeSet<(String, Option<String>, Option<String>, usize)> {
    cache.snapshot().iter().map(|p| (p.name.clone(), p.user.clone(), p.server.clone(), p.containers.len())).collect()
}

async fn wait_for(cache: &PodCache, want: &BTreeSet<(String, Option<String>, Option<String>, usize)>) {
    for _ in 0..200 {
        if view(cache) == *want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("pod view {:?} never became {want:?}", view(cache));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watch_view_matches_the_notebook_pods_exactly() {
    let api = FakeKube::start(z2jh_pods()).await;
    let dir = TempDir::new("kubeconfig").unwrap();
    let kc = dir.0.join("config");
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let cache = Arc::new(PodCache::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let opts = KubeOptions {
        node_name: "node-1".into(),
        label_selector: "component=singleuser-server".into(),
        notebook_container: "notebook".into(),
    };
    tokio::spawn(watch_pods(client, opts, cache.clone(), tx));

    let mut want = BTreeSet::from([
        ("jupyter-alice---3bc51062".to_string(), Some("Alice".to_string()), Some(String::new()), 2),
        (
            "jupyter-user-example-com---b4c9a289--gpu".to_string(),
            Some("user@example.com".to_string()),
            Some("gpu".to_string()),
            2,
        ),
    ]);
    wait_for(&cache, &want).await;
    assert!(cache.synced.load(std::sync::atomic::Ordering::Relaxed));
    let alice = cache.get(ALICE).unwrap();
    assert_eq!(alice.namespace, "jhub");
    let nb = alice.container(&ctr(1)).unwrap();
    assert_eq!((nb.name.as_str(), nb.init), ("notebook", false));
    let init = alice.container(&ctr(2)).unwrap();
    assert_eq!((init.name.as_str(), init.init), ("block-cloud-metadata", true));
    assert!(cache.get(PULLER).is_none() && cache.get(HUB).is_none(), "image puller and hub are not notebooks");

    // Watch events: a pod added, a chart pod added, a pod deleted.
    api.push("ADDED", notebook_pod("jupyter-bob---c0ffee00", BOB, "Bob", "", &ctr(5), &ctr(6))).await;
    api.push("ADDED", chart_pod("user-placeholder-0", "ffffffff-ffff-4fff-9fff-ffffffffffff", "user-placeholder"))
        .await;
    api.push("DELETED", notebook_pod("jupyter-alice---3bc51062", ALICE, "Alice", "", &ctr(1), &ctr(2))).await;
    want.remove(&("jupyter-alice---3bc51062".to_string(), Some("Alice".to_string()), Some(String::new()), 2));
    want.insert(("jupyter-bob---c0ffee00".to_string(), Some("Bob".to_string()), Some(String::new()), 2));
    wait_for(&cache, &want).await;

    let mut changes = Vec::new();
    while let Ok(c) = rx.try_recv() {
        changes.push(match c {
            PodChange::Upsert(p) => format!("+{}", p.name),
            PodChange::Removed(uid) => format!("-{uid}"),
        });
    }
    assert!(changes.contains(&"+jupyter-bob---c0ffee00".to_string()), "{changes:?}");
    assert!(changes.contains(&format!("-{ALICE}")), "{changes:?}");

    // API outage: the last known pods stay, the watch says it is degraded and keeps retrying.
    api.stop().await;
    for _ in 0..200 {
        if cache.degraded.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cache.degraded.load(std::sync::atomic::Ordering::Relaxed), "outage noticed");
    assert!(cache.errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(view(&cache), want, "last known state kept");
}

/// Starts the agent against the fake API server with kubelet-shaped cgroups.
fn run_kube_agent(api: &FakeKube, dir: &TempDir) -> GuardProcess {
    let kc = dir.0.join("config");
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    let env = [("KUBECONFIG", kc.as_os_str()), ("NODE_NAME", std::ffi::OsStr::new("node-1"))];
    GuardProcess::start_env("discovery:\n  kubernetes:\n    enabled: true\n", &[], &env).unwrap()
}

#[test]
fn processes_in_kubelet_cgroups_carry_user_pod_and_container() {
    privileged!();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(z2jh_pods()));
    let dir = TempDir::new("kube-agent").unwrap();
    // systemd driver, burstable, containerd: alice's notebook and her init container.
    let pod =
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", ALICE.replace('-', "_"));
    let nb = TestCgroup::exact(Path::new(&pod), &format!("cri-containerd-{}.scope", ctr(1))).unwrap();
    let init = TestCgroup::exact(Path::new(&pod), &format!("cri-containerd-{}.scope", ctr(2))).unwrap();
    // cgroupfs driver, guaranteed: the named server.
    let named = TestCgroup::exact(Path::new(&format!("kubepods/pod{NAMED}")), &ctr(3)).unwrap();
    let guard = run_kube_agent(&api, &dir);

    let run = |cg: &TestCgroup| {
        let pid = spawn_in(
            cg,
            Exec::Path(Path::new("/usr/bin/curl")),
            &[std::ffi::OsStr::new("curl"), std::ffi::OsStr::new("--version")],
        )
        .unwrap();
        wait_ok(pid).unwrap();
        pid
    };
    // Wait until the pods are known (the list is served at start).
    std::thread::sleep(Duration::from_millis(500));
    let a = run(&nb);
    let i = run(&init);
    let n = run(&named);
    std::thread::sleep(Duration::from_millis(400));
    let log = guard.log();
    let alerts = guard.stop().unwrap();
    let of = |pid: nix::unistd::Pid| alerts.iter().find(|x| x["output_fields"]["proc.pid"] == pid.as_raw()).cloned();

    let x = of(a).unwrap_or_else(|| panic!("no alert for the notebook container:\n{alerts:#?}\n{log}"));
    let f = &x["output_fields"];
    assert_eq!(f["jupyterhub.user"], "Alice");
    assert_eq!(f["k8s.pod.name"], "jupyter-alice---3bc51062");
    assert_eq!(f["k8s.ns.name"], "jhub");
    assert_eq!(f["container.id"], ctr(1));
    assert_eq!(f["jupyterhub.source"], "kubernetes");

    assert!(of(i).is_none(), "the init container is not a notebook");

    let y = of(n).unwrap_or_else(|| panic!("no alert for the named server:\n{alerts:#?}"));
    assert_eq!(y["output_fields"]["jupyterhub.user"], "user@example.com");
    assert_eq!(y["output_fields"]["jupyterhub.server"], "gpu");
    drop((nb, init, named));
    // The kubelet-shaped parents this test made (deepest first; busy ones stay).
    let m = find_mount();
    for d in [
        pod.as_str(),
        "kubepods.slice/kubepods-burstable.slice",
        "kubepods.slice",
        &format!("kubepods/pod{NAMED}"),
        "kubepods",
    ] {
        let _ = std::fs::remove_dir(m.join(d));
    }
}

fn find_mount() -> std::path::PathBuf {
    guard::discovery::cgroup::find_cgroup2_mount().unwrap()
}
