//! Integration tests: the real server binary on an ephemeral port, real clients.
//! One test binary with shared helpers (`common`).

mod browser;
mod browser_a11y;
mod browser_demo;
mod common;
mod examples;
mod http;
mod openai;
mod openapi;
mod security;
mod ws;
