//! The smoke version of the load generator (`cargo bench --bench load`): the same code paths
//! with tiny numbers, in seconds. It asserts correctness only (no errors, no seq gaps, nothing
//! lost, every scenario measured something), never speed: speed lives in BENCHMARKS.md.

#[path = "../benches/load/mod.rs"]
mod load;

#[test]
fn load_generator_smoke() {
    let report = load::run(&load::Options::smoke());
    report.print();
    assert!(
        report.problems.is_empty(),
        "the load generator found problems: {:#?}",
        report.problems
    );
    for scenario in ["B", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"] {
        let rows = report.rows_of(scenario);
        assert!(!rows.is_empty(), "scenario {scenario} produced no row");
        for r in rows {
            // A difference of two latencies ("a − b") may be below zero on a noisy machine.
            let difference = r.measure.contains('−');
            assert!(
                r.value.is_finite() && (r.value >= 0.0 || difference),
                "{}: not a measurement: {}",
                r.measure,
                r.value
            );
        }
    }
    // Work was actually done and checked: calls completed, events streamed, every idle socket
    // sent its message, cold starts answered.
    let positive = |scenario: &str, what: &str| {
        let r = report
            .rows_of(scenario)
            .into_iter()
            .find(|r| r.measure.contains(what))
            .unwrap_or_else(|| panic!("no row '{what}' in scenario {scenario}"));
        assert!(r.value > 0.0, "{}: {}", r.measure, r.value);
    };
    positive("1", "requests/s");
    positive("2", "round trips/s");
    positive("7", "runs/s");
    positive("3", "events/s");
    positive("4", "sends without error");
    positive("5", "messages stored/s");
    positive("6", "cold start");
    positive("8", "events/s");
    positive("9", "streamed chat completions, ");
    positive("9", "time to first content chunk");
    positive("10", "soak: invokes/s");
    positive("10", "soak: RSS at");
    positive("10", "soak: data size at");
    positive("11", "tokens delivered");
    positive("11", "time to first token through Parley");
    let sends = report
        .rows_of("4")
        .into_iter()
        .find(|r| r.measure.contains("sends without error"))
        .map(|r| r.value)
        .unwrap_or_default();
    assert_eq!(sends, load::Options::smoke().idle_sockets as f64);
}

/// Scenario 12 needs PostgreSQL and NATS, so `all` (and this smoke test) leaves it out; it is
/// asked for by name or number. Its smoke run takes ~13 s in a debug build (see BENCHMARKS.md).
#[test]
fn load_generator_cluster_scenario_is_asked_for_by_name() {
    use load::Scenario;
    assert_eq!(Scenario::parse("cluster"), Ok(vec![Scenario::Cluster]));
    assert_eq!(Scenario::parse("12"), Ok(vec![Scenario::Cluster]));
    assert!(!Scenario::parse("all")
        .expect("all")
        .contains(&Scenario::Cluster));
    let err = Scenario::parse("clusters").expect_err("an unknown name");
    assert!(err.contains("cluster or 1-12"), "{err}");
}
