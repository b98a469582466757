//! A fake Kubernetes API server for tests: serves a pod list, single pods and a pod watch stream on
//! loopback over plain HTTP, the way kube-rs's watcher asks for them. Like a careless API
//! server it ignores selectors, so the agent's own filtering is what the tests see.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Mutex};

pub struct FakeKube {
    pub addr: SocketAddr,
    events: broadcast::Sender<String>,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    pods: Arc<Mutex<Vec<Value>>>,
    /// Every event pushed, replayed to each new watch: a push must not be lost because the
    /// client's watch request had not arrived yet (replays are idempotent for the client).
    history: Arc<Mutex<Vec<String>>>,
}

impl FakeKube {
    pub async fn start(pods: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(64);
        let pods = Arc::new(Mutex::new(pods));
        let history = Arc::new(Mutex::new(Vec::new()));
        let (ev, pd, hi) = (events.clone(), pods.clone(), history.clone());
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let cs = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (ev, pd, hi) = (ev.clone(), pd.clone(), hi.clone());
                let task = tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, ev.clone(), pd.clone(), hi.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
                if let Ok(mut c) = cs.lock() {
                    c.push(task.abort_handle());
                }
            }
        });
        Self { addr, events, accept, conns, pods, history }
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`) and keeps the list in step.
    pub async fn push(&self, kind: &str, pod: Value) {
        let uid = pod["metadata"]["uid"].clone();
        {
            let mut pods = self.pods.lock().await;
            pods.retain(|p| p["metadata"]["uid"] != uid);
            if kind != "DELETED" {
                pods.push(pod.clone());
            }
        }
        let line = json!({"type": kind, "object": pod}).to_string();
        self.history.lock().await.push(line.clone());
        let _ = self.events.send(line);
    }

    /// An API outage: stop listening and end every open watch.
    pub async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        for c in self.conns.lock().map(|c| c.clone()).unwrap_or_default() {
            c.abort();
        }
    }

    /// A guard agent with Kubernetes discovery on, pointed at this server as node `node-1`
    /// (its kubeconfig written in `dir`); `policy` follows the discovery section.
    pub fn agent(&self, dir: &crate::TempDir, policy: &str) -> crate::GuardProcess {
        let kc = dir.0.join("kubeconfig");
        std::fs::write(&kc, self.kubeconfig()).expect("writing the kubeconfig");
        let env = [("KUBECONFIG", kc.as_os_str()), ("NODE_NAME", std::ffi::OsStr::new("node-1"))];
        let policy = format!("discovery:\n  kubernetes:\n    enabled: true\n{policy}");
        crate::GuardProcess::start_env(&policy, &[], &env).expect("starting the agent")
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\ncurrent-context: c\n",
            self.addr
        )
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    events: broadcast::Sender<String>,
    pods: Arc<Mutex<Vec<Value>>>,
    history: Arc<Mutex<Vec<String>>>,
) -> Result<Response<UnsyncBoxBody<Bytes, Infallible>>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    // GET one pod: /api/v1/namespaces/NS/pods/NAME
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", ns, "pods", name] = parts.as_slice() {
        let found = pods
            .lock()
            .await
            .iter()
            .find(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name)
            .cloned();
        return Ok(match found {
            Some(p) => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(p.to_string())).boxed_unsync())
                .unwrap(),
            None => {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
                Response::builder().status(404).body(Full::new(Bytes::from(body.to_string())).boxed_unsync()).unwrap()
            }
        });
    }
    if req.uri().path() != "/api/v1/pods" {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}).to_string();
        return Ok(Response::builder().status(404).body(Full::new(Bytes::from(body)).boxed_unsync()).unwrap());
    }
    if query.contains("watch=true") {
        let rx = events.subscribe();
        let replay: Vec<Result<Frame<Bytes>, Infallible>> =
            history.lock().await.iter().map(|l| Ok(Frame::data(Bytes::from(format!("{l}\n"))))).collect();
        let live = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(line) => return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line + "\n"))), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        });
        let stream = futures::stream::iter(replay).chain(live);
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())))
            .unwrap());
    }
    let items = pods.lock().await.clone();
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "100"}, "items": items});
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(list.to_string())).boxed_unsync())
        .unwrap())
}

/// A KubeSpawner (Z2JH) notebook pod, shaped like the real thing.
pub fn notebook_pod(name: &str, uid: &str, user: &str, server: &str, notebook_ctr: &str, init_ctr: &str) -> Value {
    let slug = name.trim_start_matches("jupyter-");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "jhub",
            "uid": uid,
            "resourceVersion": "10",
            "labels": {
                "app": "jupyterhub",
                "component": "singleuser-server",
                "app.kubernetes.io/component": "singleuser-server",
                "release": "jhub",
                "hub.jupyter.org/username": slug,
                "hub.jupyter.org/servername": server,
                "hub.jupyter.org/network-access-hub": "true"
            },
            "annotations": {"hub.jupyter.org/username": user, "hub.jupyter.org/servername": server}
        },
        "spec": {
            "nodeName": "node-1",
            "initContainers": [{"name": "block-cloud-metadata", "image": "quay.io/jupyterhub/k8s-network-tools:4.0.0"}],
            "containers": [{"name": "notebook", "image": "quay.io/jupyter/scipy-notebook:2025-01-01"}]
        },
        "status": {
            "phase": "Running",
            "initContainerStatuses": [{"name": "block-cloud-metadata", "containerID": format!("containerd://{init_ctr}"), "image": "x", "imageID": "x", "ready": true, "restartCount": 0}],
            "containerStatuses": [{"name": "notebook", "containerID": format!("containerd://{notebook_ctr}"), "image": "x", "imageID": "x", "ready": true, "restartCount": 0}]
        }
    })
}

/// A non-notebook pod of the chart (hub, proxy, image puller…).
pub fn chart_pod(name: &str, uid: &str, component: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "jhub", "uid": uid, "resourceVersion": "11",
                     "labels": {"app": "jupyterhub", "component": component, "release": "jhub"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "quay.io/jupyter/scipy-notebook:2025-01-01",
                 "command": ["/bin/sh", "-c", "echo \"Pulling complete\""]}]},
        "status": {"phase": "Running"}
    })
}
