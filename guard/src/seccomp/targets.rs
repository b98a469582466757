//! What to record: a cgroup path, a Kubernetes pod, or every notebook on the node.

use std::path::Path;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;

use super::recording::Target;
use crate::discovery::{
    cgroup::cgroup_id,
    kube::{pod_info, SERVERNAME_ANNOTATION, USERNAME_ANNOTATION},
    scan::{find_pod_cgroup, notebook_cgroups},
    workload::{parse, Workload},
};

#[derive(Clone, Debug)]
pub struct RecordTarget {
    pub cgroup_id: u64,
    pub target: Target,
}

/// `path` absolute on the cgroup2 mount, or relative to it.
pub fn from_cgroup(mount: &Path, path: &Path) -> Result<RecordTarget> {
    let abs =
        if path.starts_with(mount) { path.to_path_buf() } else { crate::discovery::cgroup::on_mount(mount, path) };
    if !abs.is_dir() {
        bail!("{}: no such cgroup (cgroup2 is mounted at {})", path.display(), mount.display());
    }
    let rel = Path::new("/").join(abs.strip_prefix(mount).unwrap_or(&abs));
    let (user, source) = match parse(&rel) {
        Workload::Tljh { user } => (Some(user), Some("tljh")),
        Workload::SystemdSpawner { user } => (Some(user), Some("systemdspawner")),
        Workload::Docker { .. } => (None, Some("dockerspawner")),
        Workload::KubePod { .. } => (None, Some("kubernetes")),
        Workload::Other => (None, None),
    };
    Ok(RecordTarget {
        cgroup_id: cgroup_id(&abs)?,
        target: Target {
            cgroup: rel.display().to_string(),
            user,
            source: source.map(str::to_string),
            ..Default::default()
        },
    })
}

/// Pod `ns/name`, looked up in the API (in-cluster config or KUBECONFIG); recorded at its
/// pod-level cgroup, so every container it starts later is covered.
pub fn from_pod(mount: &Path, spec: &str, container: &str) -> Result<RecordTarget> {
    let Some((ns, name)) = spec.split_once('/') else { bail!("--pod {spec:?}: expected NAMESPACE/NAME") };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pod: Pod = rt.block_on(async {
        let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
        let api: kube::Api<Pod> = kube::Api::namespaced(client, ns);
        api.get(name).await.with_context(|| format!("getting pod {spec}"))
    })?;
    target_of_pod(mount, &pod, container).with_context(|| format!("pod {spec}"))
}

fn target_of_pod(mount: &Path, pod: &Pod, container: &str) -> Result<RecordTarget> {
    let uid = pod.metadata.uid.as_deref().context("the pod has no uid")?;
    let cg = find_pod_cgroup(mount, uid).with_context(|| format!("no cgroup for pod uid {uid} on this node"))?;
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container).or(s.containers.first()))
        .and_then(|c| c.image.clone());
    let mut t = from_cgroup(mount, &cg)?;
    t.target.user = ann.get(USERNAME_ANNOTATION).cloned();
    t.target.namespace = pod.metadata.namespace.clone();
    t.target.pod = pod.metadata.name.clone();
    t.target.image = image;
    t.target.source = Some("kubernetes".into());
    let _ = ann.get(SERVERNAME_ANNOTATION);
    Ok(t)
}

/// Which pods are this node's notebooks.
#[derive(Clone, Copy)]
pub struct KubeScope<'a> {
    pub node: &'a str,
    pub selector: &'a [(String, String)],
    pub container: &'a str,
}

/// Every notebook on this node: notebook pods of `node` (when the API is reachable) and the
/// TLJH / SystemdSpawner / DockerSpawner units found in the cgroup tree.
pub fn notebooks(mount: &Path, kube: Option<KubeScope<'_>>) -> Result<Vec<RecordTarget>> {
    let mut out = Vec::new();
    for (path, w, _) in notebook_cgroups(mount, false, true, true) {
        if matches!(w, Workload::Tljh { .. } | Workload::SystemdSpawner { .. } | Workload::Docker { .. }) {
            out.push(from_cgroup(mount, &path)?);
        }
    }
    if let Some(KubeScope { node, selector, container }) = kube {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let pods = rt.block_on(async {
            let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
            let api: kube::Api<Pod> = kube::Api::all(client);
            let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
            api.list(&lp).await.context("listing this node's pods")
        })?;
        for pod in pods.items {
            if pod_info(&pod, selector).is_none() {
                continue;
            }
            match target_of_pod(mount, &pod, container) {
                Ok(t) => out.push(t),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "skipping a notebook pod"),
            }
        }
    }
    Ok(out)
}
