//! Router, function, condition and iteration nodes.

use super::*;

fn router_def() -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "triage", "type": "router", "instructions": "Pick a team for {{ start.userInput }}."},
                  {"id": "billing", "type": "reply", "text": "billing", "description": "Invoices, payments and refunds"},
                  {"id": "technical", "type": "reply", "text": "technical", "description": "Errors, crashes and bugs"}],
        "edges": [{"from": "start", "to": "triage"},
                  {"from": "triage", "to": "billing"},
                  {"from": "triage", "port": "technical", "to": "technical"}]
    })
}

#[tokio::test]
async fn router_follows_the_models_choice() {
    let a = asst(router_def());
    let h = harness();
    h.text(r#"{"choice": "technical"}"#);
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "the app crashes").await;
    r.result();
    assert_eq!(steps(r.events()), ["start", "triage", "technical"]);
    assert_eq!(cp.state["triage"], json!({"choice": "technical"}));
    let req = h.llm.request(0);
    let system = &req.messages[0].content;
    assert!(system.starts_with("Pick a team for the app crashes."));
    assert!(system.contains("billing: Invoices, payments and refunds"));
    assert!(system.contains("technical: Errors, crashes and bugs"));
    h.text(r#"{"choice": "billing"}"#);
    let r = h.send(&a, &mut cp, "refund please").await;
    assert_eq!(steps(r.events()), ["start", "triage", "billing"]);
}

#[tokio::test]
async fn router_with_a_choice_that_is_no_successor_fails() {
    let a = asst(router_def());
    let h = harness();
    h.text(r#"{"choice": "sales"}"#);
    h.text(r#"{"choice": "marketing"}"#);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    assert_eq!(r.failure().0, ErrorCode::LlmError);
    // One bad answer is repaired.
    h.text(r#"{"choice": "sales"}"#);
    h.text(r#"{"choice": "billing"}"#);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    assert_eq!(steps(r.events()), ["start", "triage", "billing"]);
}

// ---------------------------------------------------------------------------------------------
// function

fn function_def() -> Value {
    json!({
        "inputArgs": [{"name": "department", "type": "string"}, {"name": "limit", "type": "number", "default": 500}],
        "tools": {"record": {"kind": "builtin", "function": "echo"}},
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "save", "type": "function", "tool": "record",
                   "args": {"who": "{{ start.userInput }}", "limit": "{{ start.limit }}",
                            "note": "{{ start.userInput }} of {{ input.dept }}", "fixed": [1, true]}},
                  {"id": "end", "type": "end", "outputs": {"dept": "{{ save.dept }}", "limit": "{{ save.limit }}"}}],
        "edges": [{"from": "start", "to": "save", "argMapping": {"dept": "start.department"}},
                  {"from": "save", "to": "end"}]
    })
}

#[tokio::test]
async fn function_calls_its_tool_with_templated_args_and_mapped_inputs() {
    let a = asst(function_def());
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h
        .send_args(&a, &mut cp, "Ann", json!({"department": "sales"}))
        .await;
    let expected = json!({"who": "Ann", "limit": 500, "note": "Ann of sales",
                          "fixed": [1, true], "dept": "sales"});
    assert_eq!(h.tools.calls.lock()[0].1, expected);
    assert_eq!(h.tools.calls.lock()[0].2, "run-1:save:2");
    assert_eq!(cp.state["save"], expected);
    assert_eq!(r.result(), json!({"dept": "sales", "limit": 500}));
    let ev = r.events();
    assert_eq!(
        types(ev)[3..8],
        [
            "STEP_STARTED",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT"
        ]
    );
}

#[tokio::test]
async fn function_tool_failure_fails_the_run() {
    let a = asst(function_def());
    let h = harness();
    h.tools
        .canned("record", Err("HTTP 503 from the ledger".into()));
    let r = h.send(&a, &mut Checkpoint::default(), "Ann").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::ToolError);
    assert!(msg.contains("record") && msg.contains("HTTP 503"), "{msg}");
}

#[tokio::test]
async fn function_with_a_confirm_tool_waits_for_approval() {
    let a = asst(json!({
        "tools": {"pay": {"kind": "builtin", "function": "echo", "confirm": true}},
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "pay", "type": "function", "tool": "pay", "args": {"to": "{{ start.userInput }}"}}],
        "edges": [{"from": "start", "to": "pay"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "Bob").await.interrupt();
    assert_eq!(i.reason, InterruptReason::ToolConfirmation);
    assert_eq!(h.tools.count(), 0);
    h.answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap()
        .result();
    assert_eq!(cp.state["pay"], json!({"to": "Bob"}));
    h.send(&a, &mut cp, "Eve").await.interrupt();
    h.answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap()
        .result();
    assert_eq!(cp.state["pay"]["declined"], true);
    assert_eq!(h.tools.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// condition

#[tokio::test]
async fn condition_takes_the_first_true_branch_or_else() {
    let a = asst(json!({
        "inputArgs": [{"name": "amount", "type": "number", "required": true}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "check", "type": "condition", "branches": [
                      {"port": "big", "when": "start.amount > 100"},
                      {"port": "medium", "when": "{{ start.amount > 10 }}"},
                      {"port": "also_medium", "when": "start.amount > 10"}]},
                  {"id": "big", "type": "reply", "text": "big"},
                  {"id": "medium", "type": "reply", "text": "medium"},
                  {"id": "small", "type": "reply", "text": "small"}],
        "edges": [{"from": "start", "to": "check"},
                  {"from": "check", "port": "big", "to": "big"},
                  {"from": "check", "port": "medium", "to": "medium"},
                  {"from": "check", "port": "else", "to": "small"}]
    }));
    let h = harness();
    for (amount, want) in [(500, "big"), (50, "medium"), (5, "small")] {
        let mut cp = Checkpoint::default();
        let r = h
            .send_args(&a, &mut cp, "x", json!({"amount": amount}))
            .await;
        r.result();
        assert_eq!(text(r.events()), want);
        let port = if want == "small" { "else" } else { want };
        assert_eq!(cp.state["check"], json!({"port": port}));
    }
}

#[tokio::test]
async fn condition_that_cannot_be_evaluated_fails_naming_the_branch() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "check", "type": "condition", "branches": [{"port": "odd", "when": "start.userInput + 1 > 2"}]}],
        "edges": [{"from": "start", "to": "check"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "text").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("branch 'odd'"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// iteration

#[tokio::test]
async fn iteration_runs_its_body_per_item_then_done() {
    let a = asst(json!({
        "tools": {"list": {"kind": "builtin", "function": "echo"}},
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "fetch", "type": "function", "tool": "list", "args": {"items": ["pen", "ink", "pad"]}},
                  {"id": "each", "type": "iteration", "over": "{{ fetch.items }}"},
                  {"id": "say", "type": "reply", "text": "{{ each.index }}/{{ each.count }}: {{ each.item }}"},
                  {"id": "shout", "type": "reply", "text": "{{ each.item | upper }}"},
                  {"id": "end", "type": "end", "outputs": {"count": "{{ each.count }}", "last": "{{ shout.text }}"}}],
        "edges": [{"from": "start", "to": "fetch"}, {"from": "fetch", "to": "each"},
                  {"from": "each", "port": "body", "to": "say"}, {"from": "say", "to": "shout"},
                  {"from": "each", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "go").await;
    assert_eq!(r.result(), json!({"count": 3, "last": "PAD"}));
    assert_eq!(
        messages(r.events()),
        ["0/3: pen", "PEN", "1/3: ink", "INK", "2/3: pad", "PAD"]
    );
    assert_eq!(
        steps(r.events()),
        [
            "start", "fetch", "each", "say", "shout", "each", "say", "shout", "each", "say",
            "shout", "each", "end"
        ]
    );
    // The loop position is part of every checkpoint inside the body.
    let inside = &r.sink.checkpoints[4];
    assert_eq!(inside.loops.len(), 1);
    assert_eq!(inside.loops[0].node, "each");
}

#[tokio::test]
async fn iteration_over_an_empty_list_and_over_a_non_list() {
    let a = asst(json!({
        "inputArgs": [{"name": "items", "type": "array", "default": []}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "each", "type": "iteration", "over": "start.items"},
                  {"id": "say", "type": "reply", "text": "{{ each.item }}"},
                  {"id": "end", "type": "end", "outputs": {"n": "{{ each.count }}"}}],
        "edges": [{"from": "start", "to": "each"},
                  {"from": "each", "port": "body", "to": "say"},
                  {"from": "each", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "go").await;
    assert_eq!(r.result(), json!({"n": 0}));
    assert_eq!(count(r.events(), "TEXT_MESSAGE_START"), 0);
    let b = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "each", "type": "iteration", "over": "start.userInput"}],
        "edges": [{"from": "start", "to": "each"}]
    }));
    let r = h.send(&b, &mut Checkpoint::default(), "abc").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("must give a list"), "{msg}");
}

#[tokio::test]
async fn nested_iterations() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "outer", "type": "iteration", "over": "[[1, 2], [3]]"},
                  {"id": "inner", "type": "iteration", "over": "outer.item"},
                  {"id": "cell", "type": "reply", "text": "{{ outer.index }}.{{ inner.index }}={{ inner.item }}"},
                  {"id": "row", "type": "reply", "text": "row {{ outer.index }} has {{ inner.count }}"},
                  {"id": "end", "type": "end", "outputs": {"rows": "{{ outer.count }}"}}],
        "edges": [{"from": "start", "to": "outer"},
                  {"from": "outer", "port": "body", "to": "inner"},
                  {"from": "inner", "port": "body", "to": "cell"},
                  {"from": "inner", "port": "done", "to": "row"},
                  {"from": "outer", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "go").await;
    assert_eq!(r.result(), json!({"rows": 2}));
    assert_eq!(
        messages(r.events()),
        ["0.0=1", "0.1=2", "row 0 has 2", "1.0=3", "row 1 has 1"]
    );
}

#[tokio::test]
async fn iteration_body_can_pause_and_resume_in_the_loop() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "each", "type": "iteration", "over": "['a', 'b']"},
                  {"id": "ask", "type": "conversation_action", "message": "Keep {{ each.item }}?", "buttons": ["yes", "no"]},
                  {"id": "kept", "type": "reply", "text": "kept {{ each.item }}"},
                  {"id": "end", "type": "end", "outputs": {"n": "{{ each.count }}"}}],
        "edges": [{"from": "start", "to": "each"},
                  {"from": "each", "port": "body", "to": "ask"},
                  {"from": "ask", "port": "yes", "to": "kept"},
                  {"from": "each", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    assert_eq!(
        h.send(&a, &mut cp, "go").await.interrupt().message,
        "Keep a?"
    );
    // Through serde, as the store keeps it.
    let mut cp: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
    let r = h
        .answer(&a, &mut cp, Some("yes"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.interrupt().message, "Keep b?");
    assert_eq!(messages(r.events()), ["kept a"]);
    let r = h
        .answer(&a, &mut cp, Some("no"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"n": 2}));
}
