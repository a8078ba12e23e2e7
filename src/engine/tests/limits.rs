//! The step limit, cancellation, the checkpoint's wire form.

use super::agent::agent_def;
use super::llm::llm_text_def;
use super::*;

#[tokio::test]
async fn a_loop_that_never_ends_hits_the_step_limit() {
    let a = asst(json!({
        "maxSteps": 10,
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "again", "type": "condition", "branches": [{"port": "yes", "when": "true"}]},
                  {"id": "tick", "type": "reply", "text": "tick"}],
        "edges": [{"from": "start", "to": "again"},
                  {"from": "again", "port": "yes", "to": "tick"},
                  {"from": "tick", "to": "again"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "go").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepLimit);
    assert!(msg.contains("10 steps"), "{msg}");
    assert_eq!(run_error(r.events()).0, ErrorCode::StepLimit);
    assert_eq!(steps(r.events()).len(), 10);
}

#[tokio::test]
async fn cancel_before_the_start() {
    let a = asst(llm_text_def(true));
    let h = harness();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut cp = Checkpoint::default();
    let input = Input::Message {
        run_id: "r".into(),
        content: "x".into(),
        args: a.check_args(None).unwrap(),
    };
    let r = h
        .input_cancel(&a, &mut cp, input, &[], VecSink::default(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.end, RunEnd::Cancelled);
    assert_eq!(types(r.events()), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(run_error(r.events()).0, ErrorCode::Cancelled);
    assert_eq!(h.llm.count(), 0);
}

#[tokio::test]
async fn cancel_in_the_middle_of_a_streamed_answer_keeps_the_partial_text() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.llm.say(Say::Endless);
    let cancel = CancellationToken::new();
    let sink = VecSink {
        cancel_after: Some((3, cancel.clone())),
        ..Default::default()
    };
    let mut cp = Checkpoint::default();
    let input = Input::Message {
        run_id: "r".into(),
        content: "x".into(),
        args: a.check_args(None).unwrap(),
    };
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        h.input_cancel(&a, &mut cp, input, &[], sink, &cancel),
    )
    .await
    .expect("the stream is aborted")
    .unwrap();
    assert_eq!(r.end, RunEnd::Cancelled);
    let ev = r.events();
    let t = types(ev);
    assert_eq!(t[t.len() - 2..], ["TEXT_MESSAGE_END", "RUN_ERROR"]);
    assert_eq!(run_error(ev).0, ErrorCode::Cancelled);
    assert_eq!(text(ev), "w0 w1 w2 ");
    assert!(!steps(ev).contains(&"end".to_string()));
    assert_eq!(cp.position, Position::Idle);
}

#[tokio::test]
async fn a_cancelled_agent_does_not_call_its_tools() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.llm.say(Say::Calls {
        text: "Let me look.",
        calls: vec![("now", "{}".into())],
    });
    let cancel = CancellationToken::new();
    let sink = VecSink {
        cancel_after: Some((1, cancel.clone())),
        ..Default::default()
    };
    let input = Input::Message {
        run_id: "r".into(),
        content: "x".into(),
        args: Map::new(),
    };
    let r = h
        .input_cancel(&a, &mut Checkpoint::default(), input, &[], sink, &cancel)
        .await
        .unwrap();
    assert_eq!(r.end, RunEnd::Cancelled);
    assert_eq!(h.tools.count(), 0);
}

#[test]
fn checkpoint_wire_form_round_trips() {
    let cp = Checkpoint {
        run_id: Some("r".into()),
        state: json!({"start": {"userInput": "hi"}})
            .as_object()
            .cloned()
            .unwrap(),
        position: Position::Node {
            node: "draft".into(),
            inputs: Map::new(),
        },
        loops: vec![LoopFrame {
            node: "each".into(),
            items: std::sync::Arc::new(vec![json!(1)]),
            index: 0,
        }],
        steps: 3,
        usage: Usage::default(),
    };
    let v = serde_json::to_value(&cp).unwrap();
    assert_eq!(
        v["position"],
        json!({"at": "node", "node": "draft", "inputs": {}})
    );
    assert_eq!(v["runId"], "r");
    let back: Checkpoint = serde_json::from_value(v).unwrap();
    assert_eq!(back, cp);
    let idle: Checkpoint = serde_json::from_str("{\"runId\": null, \"state\": {}, \"position\": {\"at\": \"idle\"}, \"loops\": [], \"steps\": 0, \"usage\": {\"promptTokens\": 0, \"completionTokens\": 0, \"totalTokens\": 0}}").unwrap();
    assert_eq!(idle, Checkpoint::default());
}
