//! Parley: a server that runs AI assistants as durable processes.
//!
//! See `ARCHITECTURE.md` for the code map and the invariants.

pub mod assistant;
pub mod cluster;
pub mod config;
pub mod conversation;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod histogram;
pub mod llm;
pub mod metrics;
pub mod retention;
pub mod schema;
pub mod server;
pub mod services;
pub mod store;
pub mod template;
pub mod tools;
