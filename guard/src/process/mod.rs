//! Process lineage: who started what.

pub mod table;
