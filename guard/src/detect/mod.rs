//! Detection: rules over enriched events, and the alerts they raise.

pub mod alert;
pub mod rules;
