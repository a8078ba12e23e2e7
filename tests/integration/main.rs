//! Integration tests: the real server binary on an ephemeral port, real clients.
//! One test binary with shared helpers (`common`).

mod agui;
mod browser;
mod browser_a11y;
mod browser_demo;
mod cluster;
mod common;
mod conformance;
mod examples;
mod http;
mod idempotency;
mod jwt;
mod openai;
mod openapi;
mod postgres;
mod prologues;
mod protocol;
mod security;
mod sse;
mod storage;
mod ws;
