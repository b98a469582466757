//! Detection: rules over enriched events, and the alerts they raise.

pub mod aggregate;
pub mod alert;
pub mod engine;
pub mod mining;
