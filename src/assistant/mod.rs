//! Definitions (stub).
pub mod model;
