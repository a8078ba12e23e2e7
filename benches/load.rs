//! `cargo bench --bench load [-- --quick | --smoke] [--scenario LIST]`: the load generator.
//!
//! Starts the real server (release build) with the built-in model at pace 0, drives it over
//! loopback with many concurrent clients, measures a bare actix-web baseline in the same run,
//! and prints the table recorded in BENCHMARKS.md.

#[path = "load/mod.rs"]
mod load;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // Built and run by `cargo test --all-targets` (cargo passes `--bench` only under
        // `cargo bench`): the smoke version lives in tests/bench_smoke.rs.
        println!(
            "load: run with `cargo bench --bench load`; the smoke test is tests/bench_smoke.rs"
        );
        return ExitCode::SUCCESS;
    }
    let opts = match load::Options::from_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let report = load::run(&opts);
    report.print();
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
