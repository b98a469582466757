//! Where processes live: cgroups now; Kubernetes pods and JupyterHub spawners later.

pub mod cgroup;
