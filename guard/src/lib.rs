//! notebook-guard: a runtime syscall guard for JupyterHub notebook nodes.
//!
//! Data flows one way: `sensors` (kernel probes, decoding) → `discovery` (cgroups, pods) and
//! `process` (lineage) enrich → `sinks`. `agent` wires the flow for `guard run`.

pub mod agent;
pub mod clock;
pub mod detect;
pub mod discovery;
pub mod enforce;
pub mod policy;
pub mod process;
pub mod redact;
pub mod seccomp;
pub mod sensors;
pub mod server;
pub mod sinks;
