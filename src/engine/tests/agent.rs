//! Agents: tool calls, bad calls and tool errors told to the model, the step limit, confirmation and page tools.

use super::*;

pub(super) fn agent_def(extra_tools: Value) -> Value {
    let mut tools = json!({
        "find_invoice": {"kind": "builtin", "function": "lookup", "description": "Find an invoice by number",
                         "parameters": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}},
                         "data": {"INV-1": {"status": "paid", "total": 120}}},
        "now": {"kind": "builtin", "function": "clock"}
    });
    let mut names = vec![json!("find_invoice"), json!("now")];
    if let Value::Object(m) = extra_tools {
        for (k, v) in m {
            names.push(json!(k.clone()));
            tools[&k] = v;
        }
    }
    json!({
        "tools": tools,
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "desk", "type": "agent", "instructions": "You help with invoices.", "tools": names, "maxSteps": 4},
                  {"id": "end", "type": "end", "outputs": {"answer": "{{ desk.text }}"}}],
        "edges": [{"from": "start", "to": "desk"}, {"from": "desk", "to": "end"}]
    })
}

#[tokio::test]
async fn agent_calls_tools_then_answers() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.llm.say(Say::Calls {
        text: "Let me check. ",
        calls: vec![
            ("find_invoice", json!({"key": "INV-1"}).to_string()),
            ("now", "{}".into()),
        ],
    });
    h.text("INV-1 is paid.");
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "Is INV-1 paid?").await;
    assert_eq!(
        r.result(),
        json!({"answer": "Let me check. INV-1 is paid."})
    );
    assert_eq!(h.tools.names(), ["find_invoice", "now"]);
    let calls = h.tools.calls.lock().clone();
    assert_eq!(calls[0].1, json!({"key": "INV-1"}));
    // Each call has its own idempotency key, made of run, node and step.
    assert!(calls[0].2.starts_with("run-1:desk:"), "{}", calls[0].2);
    assert_ne!(calls[0].2, calls[1].2);
    let ev = r.events();
    assert_eq!(count(ev, "TOOL_CALL_START"), 2);
    assert_eq!(count(ev, "TOOL_CALL_END"), 2);
    assert_eq!(count(ev, "TOOL_CALL_RESULT"), 2);
    assert!(count(ev, "TOOL_CALL_ARGS") >= 2, "args come in pieces");
    let args: String = ev
        .iter()
        .filter_map(|e| match e {
            Event::ToolCallArgs {
                tool_call_id,
                delta,
            } if tool_call_id == "call_0" => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, r#"{"key":"INV-1"}"#);
    let result = ev
        .iter()
        .find_map(|e| match e {
            Event::ToolCallResult {
                tool_call_name,
                content,
                ..
            } if tool_call_name == "find_invoice" => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert!(result.contains("\"paid\""), "{result}");
    // The second model turn sees the assistant's calls and both results.
    let req = h.llm.request(1);
    let n = req.messages.len();
    assert_eq!(req.messages[n - 3].tool_calls.len(), 2);
    assert_eq!(req.messages[n - 2].role, Role::Tool);
    assert_eq!(req.messages[n - 2].tool_call_id.as_deref(), Some("call_0"));
    assert_eq!(req.tools.len(), 2);
    assert_eq!(messages(ev), ["Let me check. ", "INV-1 is paid."]);
}

#[tokio::test]
async fn agent_bad_tool_calls_go_back_to_the_model() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.llm.say(Say::Calls {
        text: "",
        calls: vec![
            ("find_invoice", json!({"number": 1}).to_string()),
            ("delete_everything", "{}".into()),
            ("now", "{not json".into()),
        ],
    });
    h.text("Sorry.");
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    r.result();
    assert_eq!(h.tools.count(), 0);
    let req = h.llm.request(1);
    let results: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].contains("$.key is required"), "{}", results[0]);
    assert!(results[1].contains("no tool named 'delete_everything'"));
    assert!(results[2].contains("not valid JSON"));
}

#[tokio::test]
async fn agent_tool_errors_are_told_to_the_model() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.tools.canned("now", Err("the clock is broken".into()));
    h.llm.call("now", json!({}));
    h.text("I could not read the clock.");
    let r = h.send(&a, &mut Checkpoint::default(), "time?").await;
    r.result();
    let req = h.llm.request(1);
    assert!(req
        .messages
        .iter()
        .any(|m| m.role == Role::Tool && m.content == "error: the clock is broken"));
}

#[tokio::test]
async fn agent_step_limit_fails_the_step() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    for _ in 0..4 {
        h.llm.call("now", json!({}));
    }
    let r = h.send(&a, &mut Checkpoint::default(), "loop").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("all 4 of its steps"), "{msg}");
    assert_eq!(h.llm.count(), 4);
}

pub(super) fn refund_tool() -> Value {
    json!({"issue_refund": {"kind": "builtin", "function": "echo", "confirm": true,
        "description": "Refund an invoice",
        "parameters": {"type": "object", "required": ["invoice"], "properties": {"invoice": {"type": "string"}}}}})
}

#[tokio::test]
async fn agent_confirm_tool_pauses_and_approve_runs_it() {
    let a = asst(agent_def(refund_tool()));
    assert!(!a.automated);
    let h = harness();
    h.llm.call("issue_refund", json!({"invoice": "INV-1"}));
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "Refund INV-1").await;
    let i = r.interrupt();
    assert_eq!(i.reason, InterruptReason::ToolConfirmation);
    assert_eq!(i.node_id, "desk");
    assert_eq!(
        i.buttons.as_deref(),
        Some(&["approve".to_string(), "reject".to_string()][..])
    );
    assert_eq!(
        i.payload,
        json!({"tool": "issue_refund", "arguments": {"invoice": "INV-1"}})
    );
    assert_eq!(i.tool_call_id.as_deref(), Some("call_0"));
    assert!(i.message.contains("issue_refund"));
    assert_eq!(h.tools.count(), 0, "nothing runs before the approval");
    match r.events().last() {
        Some(Event::RunFinished {
            outcome: Outcome::Interrupt { interrupts },
            ..
        }) => assert_eq!(interrupts, &vec![i.clone()]),
        e => panic!("{e:?}"),
    }
    h.text("Refund issued.");
    let r = h
        .answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"answer": "Refund issued."}));
    assert_eq!(h.tools.names(), ["issue_refund"]);
    assert_eq!(h.tools.calls.lock()[0].1, json!({"invoice": "INV-1"}));
    let ev = r.events();
    assert_eq!(count(ev, "TOOL_CALL_RESULT"), 1);
    assert!(pos(ev, "TOOL_CALL_RESULT") < pos(ev, "TEXT_MESSAGE_START"));
    assert_eq!(
        steps(ev),
        ["end"],
        "only the nodes after the agent start anew"
    );
}

#[tokio::test]
async fn agent_confirm_tool_rejected_tells_the_model() {
    let a = asst(agent_def(refund_tool()));
    let h = harness();
    h.llm.call("issue_refund", json!({"invoice": "INV-1"}));
    let mut cp = Checkpoint::default();
    h.send(&a, &mut cp, "Refund INV-1").await.interrupt();
    h.text("OK, no refund.");
    let r = h
        .answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"answer": "OK, no refund."}));
    assert_eq!(h.tools.count(), 0);
    let req = h.llm.request(1);
    let told = req.messages.iter().find(|m| m.role == Role::Tool).unwrap();
    assert!(told.content.contains("declined"), "{}", told.content);
    // A confirmation takes only approve or reject.
    h.llm.call("issue_refund", json!({"invoice": "INV-1"}));
    h.send(&a, &mut cp, "again").await.interrupt();
    let e = h
        .answer(&a, &mut cp, Some("maybe"), Value::Null)
        .await
        .err();
    assert_eq!(e.map(|e| e.code), Some(ErrorCode::BadRequest));
}

#[tokio::test]
async fn agent_page_tool_pauses_and_the_value_is_the_result() {
    let a = asst(agent_def(
        json!({"open_invoice": {"kind": "page", "action": "show_invoice",
        "description": "Open an invoice on the page"}}),
    ));
    assert!(!a.automated);
    let h = harness();
    h.llm.call("open_invoice", json!({"invoice": "INV-1"}));
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "show INV-1").await.interrupt();
    assert_eq!(i.reason, InterruptReason::PageAction);
    assert_eq!(i.action.as_deref(), Some("show_invoice"));
    assert_eq!(i.params, Some(json!({"invoice": "INV-1"})));
    assert!(i.expires_at.is_none());
    h.text("It is open.");
    let r = h
        .answer(&a, &mut cp, None, json!({"opened": true}))
        .await
        .unwrap();
    r.result();
    assert_eq!(h.tools.count(), 0, "page tools run in the page");
    let content = r
        .events()
        .iter()
        .find_map(|e| match e {
            Event::ToolCallResult { content, .. } => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(content, r#"{"opened":true}"#);
    // A page tool of an agent does not time out.
    h.llm.call("open_invoice", json!({"invoice": "INV-2"}));
    let i = h.send(&a, &mut cp, "show INV-2").await.interrupt();
    let e = h.timeout_id(&a, &mut cp, &i.id).await.err();
    assert_eq!(e.map(|e| e.code), Some(ErrorCode::InterruptNotPending));
}

#[tokio::test]
async fn agent_json_output_is_checked() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "ag", "type": "agent", "instructions": "Classify.", "output": "json",
                   "schema": {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}}],
        "edges": [{"from": "start", "to": "ag"}]
    }));
    let h = harness();
    h.text("label: spam");
    h.text(r#"{"label": "spam"}"#);
    let mut cp = Checkpoint::default();
    h.send(&a, &mut cp, "buy now").await.result();
    assert_eq!(cp.state["ag"], json!({"label": "spam"}));
    assert_eq!(h.llm.count(), 2);
}
