//! Responses beyond the alert feed: what the notebook user is told when something is refused.
//! After detection and enforcement in the flow; it reads the alerts and the process table.

pub mod notice;
