//! notebook-guard: a runtime syscall guard for JupyterHub notebook nodes.
//!
//! Data flows one way: `sensors` (kernel probes, decoding) → `discovery` (cgroups, pods) and
//! `process` (lineage) enrich → `sinks`. `agent` wires the flow for `guard run`.

pub mod agent;
pub mod clock;
pub mod discovery;
pub mod process;
pub mod sensors;
pub mod sinks;
