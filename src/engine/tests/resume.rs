//! Pause → checkpoint → serde → resume in a new engine.

use super::agent::{agent_def, refund_tool};
use super::*;

fn claim_def() -> Value {
    json!({
        "tools": {"record": {"kind": "builtin", "function": "echo"}},
        "outputArgs": [{"name": "summary", "type": "string"}, {"name": "ref", "type": "string"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "draft", "type": "llm", "prompt": "Draft a claim: {{ start.userInput }}"},
                  {"id": "save", "type": "function", "tool": "record", "args": {"text": "{{ draft.text }}"}},
                  {"id": "confirm", "type": "conversation_action", "message": "File this claim?",
                   "display": "{{ save.text }}", "buttons": ["approve", "reject"]},
                  {"id": "polish", "type": "llm", "prompt": "Polish: {{ draft.text }}"},
                  {"id": "end", "type": "end", "outputs": {"summary": "{{ polish.text }}", "ref": "{{ confirm.action }}"}}],
        "edges": [{"from": "start", "to": "draft"}, {"from": "draft", "to": "save"},
                  {"from": "save", "to": "confirm"},
                  {"from": "confirm", "port": "approve", "to": "polish"},
                  {"from": "polish", "to": "end"}]
    })
}

#[tokio::test]
async fn resume_in_a_new_engine_from_a_serialized_checkpoint() {
    let a = asst(claim_def());
    let first = harness();
    first.text("Taxi to the airport, 42 EUR.");
    let mut cp = Checkpoint::default();
    let r = first.send(&a, &mut cp, "taxi 42").await;
    let i = r.interrupt();
    assert_eq!(i.payload, json!("Taxi to the airport, 42 EUR."));
    assert_eq!((first.llm.count(), first.tools.count()), (1, 1));
    // A checkpoint at every node boundary, the last one waiting.
    assert_eq!(r.sink.checkpoints.len(), 4);
    let stored = serde_json::to_string(r.sink.checkpoints.last().unwrap()).unwrap();
    drop(first);

    // A fresh engine (a restarted server) with nothing but the stored checkpoint.
    let second = harness();
    second.text("Taxi to the airport (42 EUR), business trip.");
    let mut cp: Checkpoint = serde_json::from_str(&stored).unwrap();
    assert_eq!(cp.pending_interrupt(), Some(&i));
    let r = second
        .answer_id(&a, &mut cp, &i.id, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"summary": "Taxi to the airport (42 EUR), business trip.", "ref": "approve"})
    );
    assert_eq!(second.llm.count(), 1, "only `polish` asked the model");
    assert_eq!(second.tools.count(), 0, "`save` did not run again");
    assert_eq!(steps(r.events()), ["polish", "end"]);
    assert!(second.llm.request(0).messages[0]
        .content
        .contains("Taxi to the airport, 42 EUR."));
    match &r.events()[0] {
        Event::RunStarted { run_id } => assert_eq!(run_id, "run-1"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn resume_a_paused_agent_in_a_new_engine() {
    let a = asst(agent_def(refund_tool()));
    let first = harness();
    first.llm.say(Say::Calls {
        text: "Checking. ",
        calls: vec![
            ("find_invoice", json!({"key": "INV-1"}).to_string()),
            ("issue_refund", json!({"invoice": "INV-1"}).to_string()),
        ],
    });
    let mut cp = Checkpoint::default();
    first.send(&a, &mut cp, "refund INV-1").await.interrupt();
    assert_eq!(first.tools.names(), ["find_invoice"]);
    let stored = serde_json::to_value(&cp).unwrap();
    assert_eq!(stored["position"]["at"], "waiting");

    let second = harness();
    second.text("Done: refunded.");
    let mut cp: Checkpoint = serde_json::from_value(stored).unwrap();
    let r = second
        .answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"answer": "Checking. Done: refunded."}));
    assert_eq!(second.tools.names(), ["issue_refund"]);
    assert_eq!(second.llm.count(), 1);
    // The model's memory survived the restart: both results follow its calls.
    let req = second.llm.request(0);
    let tool_msgs = req.messages.iter().filter(|m| m.role == Role::Tool).count();
    assert_eq!(tool_msgs, 2);
}
