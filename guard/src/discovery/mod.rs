//! Where processes live: cgroups now; Kubernetes pods and JupyterHub spawners later.

pub mod attribution;
pub mod cgroup;
pub mod hub;
pub mod kube;
pub mod scan;
pub mod workload;
