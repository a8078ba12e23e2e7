//! LLM nodes: streamed text, history, reasoning, provider errors, JSON output repaired once.

use super::*;

pub(super) fn llm_text_def(history: bool) -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "answer", "type": "llm", "system": "You are terse. Today is {{ start.day }}.",
                   "prompt": "Q: {{ start.userInput }}", "history": history, "temperature": 0.2},
                  {"id": "end", "type": "end", "outputs": {"answer": "{{ answer.text }}"}}],
        "inputArgs": [{"name": "day", "type": "string", "default": "Monday"}],
        "edges": [{"from": "start", "to": "answer"}, {"from": "answer", "to": "end"}]
    })
}

#[tokio::test]
async fn llm_text_is_streamed_to_the_chat() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.text("Paris is the capital of France.");
    let history = vec![
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello! Ask away."),
    ];
    let mut cp = Checkpoint::default();
    let args = a.check_args(None).unwrap();
    let input = Input::Message {
        run_id: "r".into(),
        content: "capital of France?".into(),
        args,
    };
    let r = h
        .input(&a, &mut cp, input, &history, VecSink::default())
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"answer": "Paris is the capital of France."})
    );
    let ev = r.events();
    assert!(count(ev, "TEXT_MESSAGE_CONTENT") >= 3, "{:?}", types(ev));
    assert_eq!(count(ev, "TEXT_MESSAGE_START"), 1);
    assert_eq!(count(ev, "TEXT_MESSAGE_END"), 1);
    assert_eq!(text(ev), "Paris is the capital of France.");
    assert!(pos(ev, "TEXT_MESSAGE_START") < pos(ev, "TEXT_MESSAGE_CONTENT"));
    assert!(pos(ev, "TEXT_MESSAGE_END") < pos(ev, "RUN_FINISHED"));
    assert_eq!(
        cp.state["answer"],
        json!({"text": "Paris is the capital of France."})
    );
    assert_eq!(cp.usage.total_tokens, 5);
    // The request: system, the earlier turns, then the rendered prompt.
    let req = h.llm.request(0);
    let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::User]
    );
    assert_eq!(req.messages[0].content, "You are terse. Today is Monday.");
    assert_eq!(req.messages[3].content, "Q: capital of France?");
    assert_eq!(req.temperature, Some(0.2));
    assert_eq!(req.response_format, ResponseFormat::Text);
}

#[tokio::test]
async fn llm_without_history_sees_only_its_prompt() {
    let a = asst(llm_text_def(false));
    let h = harness();
    let history = vec![ChatMessage::user("old")];
    let input = Input::Message {
        run_id: "r".into(),
        content: "new".into(),
        args: a.check_args(None).unwrap(),
    };
    h.input(
        &a,
        &mut Checkpoint::default(),
        input,
        &history,
        VecSink::default(),
    )
    .await
    .unwrap();
    let req = h.llm.request(0);
    assert_eq!(req.messages.len(), 2);
    assert!(req.messages.iter().all(|m| m.content != "old"));
}

#[tokio::test]
async fn llm_reasoning_is_reported() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.llm.say(Say::Reasoned {
        reasoning: "The user wants a capital city.",
        text: "Paris.",
    });
    let r = h.send(&a, &mut Checkpoint::default(), "capital?").await;
    let ev = r.events();
    assert!(count(ev, "REASONING_MESSAGE_CONTENT") >= 2);
    let reasoning: String = ev
        .iter()
        .filter_map(|e| match e {
            Event::ReasoningMessageContent { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasoning, "The user wants a capital city.");
    assert_eq!(text(ev), "Paris.");
    assert!(pos(ev, "REASONING_MESSAGE_CONTENT") < pos(ev, "TEXT_MESSAGE_START"));
}

#[tokio::test]
async fn llm_provider_errors_fail_with_llm_error() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.llm.say(Say::Fail);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::LlmError);
    assert!(msg.contains("connection refused"), "{msg}");
    // A stream that breaks midway ends its message before the error.
    h.llm.say(Say::Break);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    assert_eq!(r.failure().0, ErrorCode::LlmError);
    assert_eq!(
        types(r.events()).iter().rev().take(2).collect::<Vec<_>>(),
        [&"RUN_ERROR", &"TEXT_MESSAGE_END"]
    );
}

fn llm_json_def() -> Value {
    json!({
        "outputArgs": [{"name": "amount", "type": "number"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "extract", "type": "llm", "output": "json", "prompt": "Extract: {{ start.userInput }}",
                   "schema": {"type": "object", "required": ["amount", "currency"],
                              "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}}}},
                  {"id": "end", "type": "end", "outputs": {"amount": "{{ extract.amount }}"}}],
        "edges": [{"from": "start", "to": "extract"}, {"from": "extract", "to": "end"}]
    })
}

#[tokio::test]
async fn llm_json_is_checked_and_repaired_once() {
    let a = asst(llm_json_def());
    let h = harness();
    h.text(r#"{"amount": "forty-two"}"#);
    h.text("Sure! ```json\n{\"amount\": 42, \"currency\": \"EUR\"}\n```");
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "taxi 42 EUR").await;
    assert_eq!(r.result(), json!({"amount": 42}));
    assert_eq!(
        cp.state["extract"],
        json!({"amount": 42, "currency": "EUR"})
    );
    // JSON answers are not chat text.
    assert_eq!(count(r.events(), "TEXT_MESSAGE_START"), 0);
    assert_eq!(h.llm.count(), 2);
    let first = h.llm.request(0);
    assert!(matches!(first.response_format, ResponseFormat::Json { .. }));
    let repair = h.llm.request(1);
    let last = repair.messages.last().unwrap();
    assert_eq!(last.role, Role::User);
    assert!(
        last.content.contains("$.amount must be number") && last.content.contains("$.currency"),
        "{}",
        last.content
    );
    assert_eq!(
        repair.messages[repair.messages.len() - 2].content,
        r#"{"amount": "forty-two"}"#
    );
}

#[tokio::test]
async fn llm_json_failing_twice_is_an_llm_error() {
    let a = asst(llm_json_def());
    let h = harness();
    h.text("I cannot do that.");
    h.text(r#"{"amount": 1}"#);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::LlmError);
    assert!(msg.contains("$.currency is required"), "{msg}");
    assert_eq!(run_error(r.events()).0, ErrorCode::LlmError);
    assert_eq!(h.llm.count(), 2);
}
