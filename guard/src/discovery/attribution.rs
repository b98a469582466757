//! Whose notebook is this? cgroup id → (user, pod, container, server), from the cgroup path
//! plus the Kubernetes pod cache or the spawner's own conventions.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    cgroup::{on_mount, CgroupResolver},
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

    /// The environment that says whether a Docker container is a notebook: DockerSpawner sets
    /// `JUPYTERHUB_USER` on the container, so every process that kept its environment has it.
    /// The event's process is asked first, then the container's other processes (at most
    /// [`ENV_PROBES`] in all): by the time an event is read its process may be gone, or a
    /// zombie whose environ reads empty, and any process may have cleared its own environment.
    /// Taking one of those as the container's answer would cache "not a notebook" for its whole
    /// life. The first environment naming the user wins; else any non-empty one (a container
    /// that is no notebook); None when no process could be read (ask again at the next event).
    fn container_env(&self, cgroup: &Path, pid: u32) -> Option<Vec<u8>> {
        let environ = |p: u32| std::fs::read(self.opts.proc_root.join(p.to_string()).join("environ")).ok();
        let names_user = |env: &[u8]| env_var(env, "JUPYTERHUB_USER").is_some();
        let first = environ(pid);
        if first.as_deref().is_some_and(names_user) {
            return first;
        }
        let procs = std::fs::read_to_string(on_mount(self.cgroups.mount(), cgroup).join("cgroup.procs"));
        let procs = procs.unwrap_or_default();
        let mut other = first.filter(|env| !env.is_empty());
        let others = procs.lines().filter_map(|l| l.trim().parse().ok()).filter(|&p| p != pid);
        for env in others.take(ENV_PROBES - 1).filter_map(environ) {
            if names_user(&env) {
                return Some(env);
            }
            if other.is_none() && !env.is_empty() {
                other = Some(env);
            }
        }
        other
    }

    fn classify(&self, path: &Path, pid: u32) -> (Option<Arc<Attribution>>, bool) {
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
            Workload::Docker { container_id } if self.opts.docker => match self.container_env(path, pid) {
                Some(env) => match env_var(&env, "JUPYTERHUB_USER") {
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
                None => (None, false),
            },
            _ => (None, true),
        }
    }
}

/// How many of a container's processes are read for its environment, once per container.
const ENV_PROBES: usize = 64;

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

    /// A fake cgroup2 mount and /proc: a DockerSpawner container whose processes are listed
    /// in `procs` with their environments.
    fn docker(name: &str, procs: &[(u32, &[u8])]) -> (Attributor, PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("guard-attr-{name}-{}", std::process::id()));
        let unit = Path::new("/system.slice").join(format!("docker-{}.scope", "ab".repeat(32)));
        let (mount, proc_root) = (root.join("cgroup"), root.join("proc"));
        let dir = on_mount(&mount, &unit);
        std::fs::create_dir_all(&dir).unwrap();
        let list: String = procs.iter().map(|(p, _)| format!("{p}\n")).collect();
        std::fs::write(dir.join("cgroup.procs"), list).unwrap();
        for (pid, env) in procs {
            std::fs::create_dir_all(proc_root.join(pid.to_string())).unwrap();
            std::fs::write(proc_root.join(pid.to_string()).join("environ"), env).unwrap();
        }
        let opts = AttributionOptions { proc_root, ..Default::default() };
        (Attributor::new(CgroupResolver::new(mount).unwrap(), None, opts), unit, root)
    }

    #[test]
    fn a_docker_container_is_known_by_any_process_that_kept_its_environment() {
        // The event's process is a zombie (empty environ), the next one cleared its
        // environment: the server still names the user.
        let (a, unit, root) =
            docker("kept", &[(10, b"PATH=/bin\0"), (11, b"JUPYTERHUB_USER=dave\0JUPYTERHUB_SERVER_NAME=gpu\0")]);
        let (who, is_final) = a.classify(&unit, 12);
        let who = who.expect("attributed through the server");
        assert!(is_final);
        assert_eq!((who.user.as_deref(), who.server.as_deref()), (Some("dave"), Some("gpu")));
        assert_eq!(who.container_id.as_deref(), Some("ab".repeat(32).as_str()));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_docker_container_is_judged_only_once_a_process_could_be_read() {
        // Every process gone or a zombie: no answer, and none kept (the next event asks again).
        let (a, unit, root) = docker("gone", &[(20, b"")]);
        assert_eq!(a.classify(&unit, 21), (None, false));
        std::fs::remove_dir_all(&root).unwrap();
        // Live processes, none naming a user: a container that is no notebook, for good.
        let (a, unit, root) = docker("other", &[(30, b"PATH=/bin\0"), (31, b"HOME=/\0")]);
        assert_eq!(a.classify(&unit, 30), (None, true));
        std::fs::remove_dir_all(root).unwrap();
    }
}
