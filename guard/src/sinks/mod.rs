//! Where events and alerts go.

pub mod events;
