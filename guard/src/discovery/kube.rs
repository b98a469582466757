//! Kubernetes: a node-scoped watch of notebook pods (KubeSpawner / Z2JH).
//!
//! The container runtime knows pod names but not labels or annotations, so the agent watches
//! the API server for pods on its own node (`spec.nodeName`). The JupyterHub user comes from the
//! `hub.jupyter.org/username` annotation (the label and pod name are lossy slugs). On API
//! outages the last known state is kept and the watch reconnects with back-off.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio::sync::mpsc;

pub const USERNAME_ANNOTATION: &str = "hub.jupyter.org/username";
pub const SERVERNAME_ANNOTATION: &str = "hub.jupyter.org/servername";

/// Z2JH components that share labels or even the image with notebooks but are not notebooks.
const NOT_NOTEBOOK_COMPONENTS: &[&str] = &[
    "hub",
    "proxy",
    "autohttps",
    "user-scheduler",
    "user-placeholder",
    "continuous-image-puller",
    "hook-image-puller",
    "image-puller",
];

#[derive(Clone, Debug)]
pub struct KubeOptions {
    pub node_name: String,
    /// Equality label selector, `k=v[,k=v…]`.
    pub label_selector: String,
    pub notebook_container: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub init: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub user: Option<String>,
    /// Named server ("" for the default server).
    pub server: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Container id (without the `containerd://` scheme) → container.
    pub containers: HashMap<String, ContainerInfo>,
}

impl PodInfo {
    /// The container's name, if the pod status already lists its id.
    pub fn container(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.get(id)
    }
}

/// Parses `k=v,k2=v2` (equality-based selectors only).
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("selector term {p:?} is not key=value"))?;
            let k = k.trim().trim_end_matches('=');
            if k.is_empty() || k.ends_with('!') {
                return Err(format!("selector term {p:?}: only key=value is supported"));
            }
            Ok((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The agent's view of a pod, or None when it is not a notebook pod.
pub fn pod_info(pod: &Pod, selector: &[(String, String)]) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return None;
    }
    for key in ["component", "app.kubernetes.io/component"] {
        if labels.get(key).is_some_and(|c| NOT_NOTEBOOK_COMPONENTS.contains(&c.as_str())) {
            return None;
        }
    }
    let ann = meta.annotations.clone().unwrap_or_default();
    let mut containers = HashMap::new();
    if let Some(status) = &pod.status {
        let lists = [(status.container_statuses.as_ref(), false), (status.init_container_statuses.as_ref(), true)];
        for (list, init) in lists {
            for cs in list.into_iter().flatten() {
                if let Some(id) = cs.container_id.as_deref().and_then(|id| id.split_once("://").map(|(_, i)| i)) {
                    containers.insert(id.to_string(), ContainerInfo { name: cs.name.clone(), init });
                }
            }
        }
    }
    Some(PodInfo {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone()?,
        user: ann.get(USERNAME_ANNOTATION).cloned(),
        server: ann.get(SERVERNAME_ANNOTATION).cloned(),
        labels,
        containers,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodChange {
    Upsert(Arc<PodInfo>),
    Removed(String),
}

/// Notebook pods on this node by UID, plus the watch's health.
#[derive(Default)]
pub struct PodCache {
    pods: RwLock<HashMap<String, Arc<PodInfo>>>,
    /// True once the first full list arrived.
    pub synced: AtomicBool,
    /// True while the watch is failing (the cache keeps the last known state).
    pub degraded: AtomicBool,
    pub errors: AtomicU64,
}

impl PodCache {
    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.pods.read().ok()?.get(uid).cloned()
    }

    pub fn snapshot(&self) -> Vec<Arc<PodInfo>> {
        let mut v: Vec<_> = self.pods.read().map(|p| p.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    fn upsert(&self, p: PodInfo) -> Option<PodChange> {
        let p = Arc::new(p);
        let mut pods = self.pods.write().ok()?;
        if pods.get(&p.uid).is_some_and(|old| **old == *p) {
            return None;
        }
        pods.insert(p.uid.clone(), p.clone());
        Some(PodChange::Upsert(p))
    }

    fn remove(&self, uid: &str) -> Option<PodChange> {
        self.pods.write().ok()?.remove(uid).map(|_| PodChange::Removed(uid.to_string()))
    }

    /// After a re-list: pods not listed again are gone.
    fn retain(&self, keep: &std::collections::HashSet<String>) -> Vec<PodChange> {
        let Ok(mut pods) = self.pods.write() else {
            return vec![];
        };
        let gone: Vec<String> = pods.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        gone.into_iter()
            .map(|uid| {
                pods.remove(&uid);
                PodChange::Removed(uid)
            })
            .collect()
    }
}

/// Runs the pod watch until the stream ends (never, normally). Changes go to `changes`.
pub async fn watch_pods(client: Client, opts: KubeOptions, cache: Arc<PodCache>, changes: mpsc::Sender<PodChange>) {
    let selector = match parse_selector(&opts.label_selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "invalid notebook label selector");
            return;
        }
    };
    let api: Api<Pod> = Api::all(client);
    let cfg =
        watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node_name)).labels(&opts.label_selector);
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut listed = std::collections::HashSet::new();
    while let Some(ev) = stream.next().await {
        let out: Vec<PodChange> = match ev {
            Ok(watcher::Event::Init) => {
                listed.clear();
                vec![]
            }
            Ok(watcher::Event::InitApply(pod)) | Ok(watcher::Event::Apply(pod)) => {
                if cache.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("kubernetes pod watch recovered");
                }
                match pod_info(&pod, &selector) {
                    Some(info) => {
                        listed.insert(info.uid.clone());
                        cache.upsert(info).into_iter().collect()
                    }
                    // A pod that stopped matching is gone for us.
                    None => pod.metadata.uid.as_deref().and_then(|u| cache.remove(u)).into_iter().collect(),
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                pod.metadata.uid.as_deref().and_then(|u| cache.remove(u)).into_iter().collect()
            }
            Ok(watcher::Event::InitDone) => {
                let gone = cache.retain(&listed);
                if !cache.synced.swap(true, Ordering::Relaxed) {
                    tracing::info!(pods = cache.snapshot().len(), node = %opts.node_name, "kubernetes pod list synced");
                }
                gone
            }
            Err(e) => {
                cache.errors.fetch_add(1, Ordering::Relaxed);
                if !cache.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "kubernetes pod watch failing; keeping last known pods, retrying with back-off");
                }
                vec![]
            }
        };
        for change in out {
            if changes.send(change).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_parsing() {
        assert_eq!(
            parse_selector("component=singleuser-server, app=jupyterhub").unwrap(),
            vec![("component".into(), "singleuser-server".into()), ("app".into(), "jupyterhub".into())]
        );
        assert!(parse_selector("component!=hub").is_err());
        assert!(parse_selector("component").is_err());
    }
}
