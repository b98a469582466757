//! Responses beyond the alert feed: what the notebook user is told when something is refused,
//! and what JupyterHub is asked to do. After detection and enforcement in the flow; it reads
//! the alerts and the process table.

pub mod hub;
pub mod notice;
