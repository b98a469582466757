//! notebook-guard: a runtime syscall guard for JupyterHub notebook nodes.
//!
//! Data flows one way: `sensors` (kernel probes, decoding) → `discovery` (cgroups, pods),
//! `process` (lineage, roles) and `policy` (the rules, which files are Python) → `enrich` (one
//! event's facts, gathered once) → `detect` (the verdict) and `enforce` (the kernel's maps) →
//! `respond` (the notebook user told why) and `sinks`. `agent` wires the flow for `guard run`;
//! no module imports one after it.

pub mod agent;
pub mod clock;
pub mod detect;
pub mod discovery;
pub mod enforce;
pub mod enrich;
pub mod http;
pub mod policy;
pub mod process;
pub mod redact;
pub mod respond;
pub mod seccomp;
pub mod sensors;
pub mod server;
pub mod sinks;

/// Maps and sets keyed by numbers the kernel assigns (pids, cgroup ids, inodes), looked up
/// several times per event: std's SipHash, built for keys an attacker picks, was about 8% of
/// the agent's CPU under an exec storm. foldhash is randomly seeded as well. Keys a notebook
/// user writes (paths, command lines) stay on std's hasher.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
