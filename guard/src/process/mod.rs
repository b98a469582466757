//! Process lineage: who started what, and which notebook a kernel serves.

pub mod kernel;
pub mod roles;
pub mod table;
