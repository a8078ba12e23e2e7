//! Start and end nodes: checked outputs, a node without a way out.

use super::*;

#[tokio::test]
async fn start_and_end_with_checked_outputs() {
    let a = asst(json!({
        "inputArgs": [{"name": "department", "type": "string", "enum": ["sales", "r&d"], "required": true},
                      {"name": "limit", "type": "number", "default": 500}],
        "outputArgs": [{"name": "summary", "type": "string", "required": true},
                       {"name": "limit", "type": "number"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "end", "type": "end", "outputs": {
                      "summary": "{{ start.department }}: {{ start.userInput }}",
                      "limit": "{{ start.limit }}"}}],
        "edges": [{"from": "start", "to": "end"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h
        .send_args(&a, &mut cp, "taxi", json!({"department": "sales"}))
        .await;
    assert_eq!(r.result(), json!({"summary": "sales: taxi", "limit": 500}));
    assert_eq!(
        types(r.events()),
        [
            "RUN_STARTED",
            "STEP_STARTED",
            "STEP_FINISHED",
            "STEP_STARTED",
            "STEP_FINISHED",
            "RUN_FINISHED"
        ]
    );
    match &r.events()[2] {
        Event::StepFinished {
            step_name,
            node_type,
            output,
        } => {
            assert_eq!((step_name.as_str(), node_type.as_str()), ("start", "start"));
            assert_eq!(
                output,
                &json!({"userInput": "taxi", "department": "sales", "limit": 500})
            );
        }
        e => panic!("{e:?}"),
    }
    match r.events().last() {
        Some(Event::RunFinished {
            run_id,
            outcome: Outcome::Success { result },
            ..
        }) => {
            assert_eq!(run_id, "run-1");
            assert_eq!(result["summary"], "sales: taxi");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(cp.state["end"]["limit"], 500);
    assert_eq!(h.llm.count(), 0);
}

#[tokio::test]
async fn end_output_of_the_wrong_type_fails_naming_the_field() {
    let a = asst(json!({
        "outputArgs": [{"name": "summary", "type": "string"}, {"name": "total", "type": "number"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "end", "type": "end", "outputs": {"summary": "ok", "total": "{{ start.userInput }}"}}],
        "edges": [{"from": "start", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "twelve").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("'total'") && msg.contains("number"), "{msg}");
    assert_eq!(run_error(r.events()).0, ErrorCode::StepFailed);
    assert_eq!(count(r.events(), "RUN_FINISHED"), 0);
}

#[tokio::test]
async fn end_output_outside_its_enum_fails() {
    let a = asst(json!({
        "outputArgs": [{"name": "status", "type": "string", "enum": ["open", "closed"]}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "end", "type": "end", "outputs": {"status": "{{ start.userInput }}"}}],
        "edges": [{"from": "start", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "open").await;
    assert_eq!(r.result(), json!({"status": "open"}));
    let r = h.send(&a, &mut Checkpoint::default(), "lost").await;
    let (_, msg) = r.failure();
    assert!(msg.contains("'status'") && msg.contains("one of"), "{msg}");
}

#[tokio::test]
async fn a_node_without_a_way_out_ends_the_run() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "hello", "type": "reply", "text": "Hello {{ start.userInput }}"}],
        "edges": [{"from": "start", "to": "hello"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "Ann").await;
    assert_eq!(r.result(), json!({}));
    assert_eq!(text(r.events()), "Hello Ann");
}
