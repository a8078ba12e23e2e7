//! Human interaction: reply, conversation actions (buttons) and page actions, refused and double answers.

use super::*;

#[tokio::test]
async fn reply_sends_text_and_a_card() {
    let a = asst(json!({
        "inputArgs": [{"name": "amount", "type": "number", "default": 42}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "done", "type": "reply", "text": "Filed {{ start.userInput }} for {{ start.amount }} EUR.",
                   "data": {"title": "Claim", "total": "{{ start.amount }}", "lines": ["{{ start.userInput }}"]}}],
        "edges": [{"from": "start", "to": "done"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "taxi").await;
    r.result();
    let ev = r.events();
    assert_eq!(text(ev), "Filed taxi for 42 EUR.");
    let card = json!({"title": "Claim", "total": 42, "lines": ["taxi"]});
    assert!(ev.contains(&Event::Custom {
        name: "card".into(),
        value: card.clone()
    }));
    assert!(pos(ev, "TEXT_MESSAGE_END") < pos(ev, "CUSTOM"));
    assert_eq!(cp.state["done"]["data"], card);
}

// ---------------------------------------------------------------------------------------------
// conversation_action

fn card_def() -> Value {
    json!({
        "inputArgs": [{"name": "amount", "type": "number", "default": 42}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "approval", "type": "conversation_action", "message": "File {{ start.userInput }}?",
                   "display": {"amount": "{{ start.amount }}", "what": "{{ start.userInput }}"},
                   "buttons": ["approve", "reject"], "editable": true},
                  {"id": "yes", "type": "reply", "text": "Filed {{ approval.data.amount }} for {{ approval.data.what }}."},
                  {"id": "no", "type": "reply", "text": "Dropped."},
                  {"id": "why", "type": "reply", "text": "You said: {{ approval.value }}"}],
        "edges": [{"from": "start", "to": "approval"},
                  {"from": "approval", "port": "approve", "to": "yes"},
                  {"from": "approval", "port": "reject", "to": "no"},
                  {"from": "approval", "port": "reply", "to": "why"}]
    })
}

#[tokio::test]
async fn conversation_action_pauses_and_a_button_follows_its_port() {
    let a = asst(card_def());
    assert!(!a.automated);
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "taxi").await;
    let i = r.interrupt();
    assert_eq!(i.reason, InterruptReason::ConversationAction);
    assert_eq!(i.node_id, "approval");
    assert_eq!(i.message, "File taxi?");
    assert_eq!(i.payload, json!({"amount": 42, "what": "taxi"}));
    assert!(i.editable);
    assert_eq!(
        i.buttons,
        Some(vec!["approve".to_string(), "reject".to_string()])
    );
    assert_eq!(cp.pending_interrupt(), Some(&i));
    assert_eq!(types(r.events()).last(), Some(&"RUN_FINISHED"));
    assert_eq!(steps(r.events()), ["start", "approval"]);
    // Edited data replaces the shown data.
    let r = h
        .answer(
            &a,
            &mut cp,
            Some("approve"),
            json!({"amount": 40, "what": "taxi"}),
        )
        .await
        .unwrap();
    r.result();
    assert_eq!(text(r.events()), "Filed 40 for taxi.");
    assert_eq!(cp.state["approval"]["action"], "approve");
    // A button without edits keeps the shown data.
    h.send(&a, &mut cp, "hotel").await.interrupt();
    let r = h
        .answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap();
    assert_eq!(text(r.events()), "Dropped.");
    assert_eq!(
        cp.state["approval"],
        json!({"action": "reject", "value": null, "data": {"amount": 42, "what": "hotel"}})
    );
    // A typed reply takes the `reply` port.
    h.send(&a, &mut cp, "hotel").await.interrupt();
    let r = h
        .answer(&a, &mut cp, Some("reply"), json!("make it 30"))
        .await
        .unwrap();
    assert_eq!(text(r.events()), "You said: make it 30");
}

#[tokio::test]
async fn wrong_or_missing_button_is_a_bad_request() {
    let a = asst(card_def());
    let h = harness();
    let mut cp = Checkpoint::default();
    h.send(&a, &mut cp, "taxi").await.interrupt();
    let before = cp.clone();
    let e = h
        .answer(&a, &mut cp, Some("maybe"), Value::Null)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("approve, reject"), "{}", e.message);
    let e = h
        .answer(&a, &mut cp, None, Value::Null)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(cp, before, "a refused answer changes nothing");
    // Still answerable.
    h.answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap()
        .result();
}

#[tokio::test]
async fn second_answer_to_the_same_interrupt_is_refused() {
    let a = asst(card_def());
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "taxi").await.interrupt();
    h.answer_id(&a, &mut cp, &i.id, Some("approve"), Value::Null)
        .await
        .unwrap()
        .result();
    let calls_before = h.tools.count();
    let events_before = cp.clone();
    let e = h
        .answer_id(&a, &mut cp, &i.id, Some("approve"), Value::Null)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::InterruptNotPending);
    assert_eq!(cp, events_before);
    assert_eq!(h.tools.count(), calls_before);
    // Also when the conversation waits on another interrupt.
    let j = h.send(&a, &mut cp, "hotel").await.interrupt();
    assert_ne!(i.id, j.id);
    let e = Engine::check_input(
        &cp,
        &Input::Answer {
            interrupt_id: i.id.clone(),
            action: Some("approve".into()),
            value: Value::Null,
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.code, ErrorCode::InterruptNotPending);
    // A new message while paused is refused (the actor turns it into an answer).
    let e = Engine::check_input(
        &cp,
        &Input::Message {
            run_id: "r2".into(),
            content: "hi".into(),
            args: Map::new(),
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.code, ErrorCode::ConversationBusy);
}

// ---------------------------------------------------------------------------------------------
// page_action

fn page_def(timeout: bool) -> Value {
    let mut fill = json!({"id": "fill", "type": "page_action", "action": "fill_claim_form",
        "params": {"amount": "{{ start.amount }}", "purpose": "{{ start.userInput }}"},
        "prompt": "Check the form and press Submit."});
    let mut edges = vec![
        json!({"from": "start", "to": "fill"}),
        json!({"from": "fill", "to": "end"}),
    ];
    if timeout {
        fill["timeoutSeconds"] = json!(30);
        edges.push(json!({"from": "fill", "port": "timeout", "to": "late"}));
    }
    json!({
        "inputArgs": [{"name": "amount", "type": "number", "default": 42}],
        "nodes": [{"id": "start", "type": "start"}, fill,
                  {"id": "late", "type": "reply", "text": "The form was not submitted in time."},
                  {"id": "end", "type": "end", "outputs": {"form": "{{ fill.value }}"}}],
        "edges": edges
    })
}

#[tokio::test]
async fn page_action_pauses_and_the_answer_is_its_value() {
    let mut def = page_def(false);
    // `late` is unreachable without the timeout edge.
    def["nodes"].as_array_mut().unwrap().remove(2);
    let a = asst(def);
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "taxi").await.interrupt();
    assert_eq!(i.reason, InterruptReason::PageAction);
    assert_eq!(i.action.as_deref(), Some("fill_claim_form"));
    assert_eq!(i.params, Some(json!({"amount": 42, "purpose": "taxi"})));
    assert_eq!(i.message, "Check the form and press Submit.");
    assert!(i.expires_at.is_none());
    let r = h
        .answer(&a, &mut cp, None, json!({"submitted": true, "ref": "C-7"}))
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"form": {"submitted": true, "ref": "C-7"}})
    );
    assert_eq!(
        cp.state["fill"],
        json!({"value": {"submitted": true, "ref": "C-7"}})
    );
    // Without a timeout there is nothing to time out.
    h.send(&a, &mut cp, "taxi").await.interrupt();
    let id = cp.pending_interrupt().unwrap().id.clone();
    let e = Engine::check_input(&cp, &Input::Timeout { interrupt_id: id }).err();
    assert_eq!(e.map(|e| e.code), Some(ErrorCode::InterruptNotPending));
}

#[tokio::test]
async fn page_action_timeout_takes_the_timeout_port() {
    let a = asst(page_def(true));
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "taxi").await.interrupt();
    let at = i.expires_at.clone().expect("expiresAt");
    // RFC 3339 in UTC: compared to the second as text.
    let fmt = |secs: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()[..19]
            .to_string()
    };
    assert!(at.ends_with('Z'), "{at}");
    assert!(
        fmt(20).as_str() < &at[..19] && &at[..19] <= fmt(30).as_str(),
        "{at}"
    );
    let r = h.timeout_id(&a, &mut cp, &i.id).await.unwrap();
    assert_eq!(r.result(), json!({}));
    assert_eq!(text(r.events()), "The form was not submitted in time.");
    assert_eq!(cp.state["fill"]["timedOut"], true);
    // The page answering after the timeout is too late.
    let e = h
        .answer_id(&a, &mut cp, &i.id, None, json!({}))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::InterruptNotPending);
}
