//! Whose notebook is this? cgroup id → (user, pod, container, server), from the cgroup path
//! plus the Kubernetes pod cache or the spawner's own conventions.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use super::{
    cgroup::CgroupResolver,
    kube::PodCache,
    workload::{parse, Workload},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Kubernetes,
    Tljh,
    SystemdSpawner,
    DockerSpawner,
    LocalProcessSpawner,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Kubernetes => "kubernetes",
            Source::Tljh => "tljh",
            Source::SystemdSpawner => "systemdspawner",
            Source::DockerSpawner => "dockerspawner",
            Source::LocalProcessSpawner => "localprocessspawner",
        }
    }
}

/// A notebook container (or unit) and its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub source: Source,
    pub user: Option<String>,
    pub server: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub cgroup: PathBuf,
    /// The cgroup's id: which incarnation of `cgroup` (a unit restarted at once is made again
    /// at the same path with a new id). 0 when not known.
    pub cgroup_id: u64,
}

impl Attribution {
    /// A notebook of `source` in `cgroup`, nothing else known yet.
    pub fn new(source: Source, cgroup: PathBuf) -> Self {
        Self {
            source,
            user: None,
            server: None,
            namespace: None,
            pod: None,
            pod_uid: None,
            container_id: None,
            container_name: None,
            labels: BTreeMap::new(),
            cgroup,
            cgroup_id: 0,
        }
    }

    /// A Kubernetes notebook pod (container not known yet).
    pub fn of_pod(pod: &super::kube::PodInfo, cgroup: PathBuf) -> Self {
        Self {
            user: pod.user.clone(),
            server: pod.server.clone(),
            namespace: Some(pod.namespace.clone()),
            pod: Some(pod.name.clone()),
            pod_uid: Some(pod.uid.clone()),
            labels: pod.labels.clone(),
            ..Self::new(Source::Kubernetes, cgroup)
        }
    }
}

#[derive(Clone, Debug)]
pub struct AttributionOptions {
    pub notebook_container: String,
    pub tljh: bool,
    pub docker: bool,
    pub proc_root: PathBuf,
}

impl Default for AttributionOptions {
    fn default() -> Self {
        Self { notebook_container: "notebook".into(), tljh: true, docker: true, proc_root: "/proc".into() }
    }
}

pub struct Attributor {
    pub cgroups: CgroupResolver,
    pods: Option<Arc<PodCache>>,
    opts: AttributionOptions,
    /// Final answers per cgroup id (None: definitely not a notebook).
    cache: crate::IdMap<u64, Option<Arc<Attribution>>>,
}

const CACHE_MAX: usize = 65536;

impl Attributor {
    pub fn new(cgroups: CgroupResolver, pods: Option<Arc<PodCache>>, opts: AttributionOptions) -> Self {
        Self { cgroups, pods, opts, cache: Default::default() }
    }

    /// The notebook a process in cgroup `id` belongs to; `pid` is used to read a DockerSpawner
    /// container's environment the first time it is seen.
    pub fn attribute(&mut self, id: u64, pid: u32) -> Option<Arc<Attribution>> {
        if let Some(hit) = self.cache.get(&id) {
            return hit.clone();
        }
        let path = self.cgroups.resolve(id)?;
        let (answer, is_final) = self.classify(&path, pid);
        let answer = answer.map(|a| Arc::new(Attribution { cgroup_id: id, ..Arc::unwrap_or_clone(a) }));
        if is_final {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache.insert(id, answer.clone());
        }
        answer
    }

    /// Forgets cgroup `id` (removed, or replaced by a new incarnation at its path). Its path
    /// stays known: events its processes left in the queue are still attributed (ids are not
    /// reused while the resolver's cache lives).
    pub fn forget(&mut self, id: u64) {
        self.cache.remove(&id);
    }

    /// Forget cached answers (pods changed).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    fn classify(&self, path: &std::path::Path, pid: u32) -> (Option<Arc<Attribution>>, bool) {
        let base = |source| Attribution::new(source, path.to_path_buf());
        match parse(path) {
            Workload::KubePod { pod_uid, container_id, .. } => {
                let Some(pod) = self.pods.as_ref().and_then(|c| c.get(&pod_uid)) else {
                    // Not a notebook pod, or not known yet: decide again next time.
                    return (None, false);
                };
                let container = container_id.as_deref().and_then(|cid| pod.container(cid));
                if let Some(c) = container {
                    if c.init || c.name != self.opts.notebook_container {
                        return (None, true);
                    }
                }
                let a = Attribution {
                    container_id: container_id.clone(),
                    container_name: container.map(|c| c.name.clone()),
                    ..Attribution::of_pod(&pod, path.to_path_buf())
                };
                // A container the pod status does not list yet (it started a moment ago) is
                // taken as the notebook, and asked again once the status catches up. Pod-level
                // processes (no container id) are the sandbox: not a notebook.
                if container_id.is_none() {
                    return (None, true);
                }
                (Some(Arc::new(a)), container.is_some())
            }
            Workload::Tljh { user } if self.opts.tljh => {
                (Some(Arc::new(Attribution { user: Some(user), ..base(Source::Tljh) })), true)
            }
            Workload::SystemdSpawner { user } if self.opts.tljh => {
                (Some(Arc::new(Attribution { user: Some(user), ..base(Source::SystemdSpawner) })), true)
            }
            Workload::Docker { container_id } if self.opts.docker => {
                let environ = std::fs::read(self.opts.proc_root.join(pid.to_string()).join("environ"));
                match environ {
                    Ok(env) => match env_var(&env, "JUPYTERHUB_USER") {
                        Some(user) => (
                            Some(Arc::new(Attribution {
                                user: Some(user),
                                server: env_var(&env, "JUPYTERHUB_SERVER_NAME"),
                                container_id: Some(container_id),
                                ..base(Source::DockerSpawner)
                            })),
                            true,
                        ),
                        None => (None, true),
                    },
                    Err(_) => (None, false),
                }
            }
            _ => (None, true),
        }
    }
}

/// LocalProcessSpawner: a notebook server started by the hub itself, in the hub's cgroup, as
/// the user's uid; its environment names the user.
pub fn local_server(environ: &[u8], cgroup: PathBuf) -> Option<Attribution> {
    let user = env_var(environ, "JUPYTERHUB_USER")?;
    Some(Attribution {
        user: Some(user),
        server: env_var(environ, "JUPYTERHUB_SERVER_NAME"),
        ..Attribution::new(Source::LocalProcessSpawner, cgroup)
    })
}

/// One variable of a `KEY=VALUE\0…` environment block.
pub fn env_var(environ: &[u8], key: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_finds_exact_keys() {
        let env = b"JUPYTERHUB_USER=alice\0JUPYTERHUB_USER_X=no\0EMPTY=\0";
        assert_eq!(env_var(env, "JUPYTERHUB_USER").as_deref(), Some("alice"));
        assert_eq!(env_var(env, "EMPTY").as_deref(), Some(""));
        assert_eq!(env_var(env, "MISSING"), None);
    }
}
