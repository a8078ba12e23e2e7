//! Tests of the AG-UI translator: event order, unique step names, no duplicate messages when
//! history is re-sent, and the golden corpus (live, stored and `Value` outputs alike).

use super::*;
use crate::llm::Usage;
use serde_json::json;

fn start(node: &str) -> Event {
    Event::StepStarted {
        step_name: node.into(),
        node_type: "reply".into(),
    }
}

fn finish(node: &str) -> Event {
    Event::StepFinished {
        step_name: node.into(),
        node_type: "reply".into(),
        output: Value::Null,
    }
}

/// Stored events (and `reopen` points) whose translation is pinned in `golden/translated.sse`.
const CORPUS: &str = include_str!("golden/corpus.jsonl");
/// The SSE the translator wrote for [`CORPUS`] (regenerate with `PARLEY_WRITE_GOLDEN=1`
/// only when the wire form changes on purpose).
const GOLDEN: &str = include_str!("golden/translated.sse");

fn sse_of(tr: &Translated) -> String {
    format!("id: {}\ndata: {}\n\n", tr.seq, tr.event)
}

/// The corpus through the translator, as the SSE a client reads: through the response's
/// writer from stored JSON (`write_json`), from the events themselves as a live delivery
/// hands them over (`write_item`), and through the `Value`s of `push_json` (all three
/// must agree).
fn golden_run() -> (String, String, String) {
    let mut typed = Translator::new("thread-\"1\"");
    let mut live = Translator::new("thread-\"1\"");
    let mut valued = Translator::new("thread-\"1\"");
    let mut w = SseWriter::default();
    let mut lw = SseWriter::default();
    let mut out = String::new();
    for line in CORPUS.lines() {
        let v: Value = serde_json::from_str(line).expect("a corpus line is JSON");
        if let Some(seq) = v.get("reopen").and_then(Value::as_u64) {
            typed.reopen_with(&mut |a| w.event(Some(seq), &a));
            live.reopen_with(&mut |a| lw.event(Some(seq), &a));
            valued.reopen(seq).iter().for_each(|tr| out += &sse_of(tr));
            continue;
        }
        let seq = v["seq"].as_u64().expect("a corpus line has a seq");
        let json = match v.get("raw").and_then(Value::as_str) {
            Some(raw) => raw.to_owned(),
            None => v["event"].to_string(),
        };
        typed.write_json(seq, json.as_bytes(), &mut w);
        // Delivered live, an event comes as itself (an unreadable one cannot be made).
        let item = Item {
            seq,
            json: bytes::Bytes::from(json.clone()),
            typed: Event::from_stored(json.as_bytes())
                .ok()
                .map(std::sync::Arc::new),
        };
        live.write_item(&item, &mut lw);
        valued
            .push_json(seq, json.as_bytes())
            .iter()
            .for_each(|tr| out += &sse_of(tr));
    }
    let typed = String::from_utf8(w.take().to_vec()).expect("SSE is UTF-8");
    let live = String::from_utf8(lw.take().to_vec()).expect("SSE is UTF-8");
    (typed, live, out)
}

#[test]
fn the_corpus_translates_to_the_golden_sse() {
    let (out, live, valued) = golden_run();
    assert_eq!(out, valued, "the SSE writer and the Values disagree");
    assert_eq!(
        out, live,
        "events delivered live translate unlike their stored JSON"
    );
    if std::env::var_os("PARLEY_WRITE_GOLDEN").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/gateway/agui/golden/translated.sse"
        );
        std::fs::write(path, &out).expect("writing the golden file");
        return;
    }
    assert!(!GOLDEN.is_empty(), "the golden file is empty");
    for (i, (a, b)) in out.lines().zip(GOLDEN.lines()).enumerate() {
        assert_eq!(a, b, "line {} differs", i + 1);
    }
    assert_eq!(out, GOLDEN);
}

fn types(out: &[Translated]) -> Vec<String> {
    out.iter()
        .map(|t| t.event["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn repeated_nodes_get_numbered_step_names_and_the_user_echo_is_dropped() {
    let events = vec![
        (
            1,
            Event::TextMessageStart {
                message_id: "u".into(),
                role: Role::User,
            },
        ),
        (
            2,
            Event::TextMessageContent {
                message_id: "u".into(),
                delta: "hi".into(),
            },
        ),
        (
            3,
            Event::TextMessageEnd {
                message_id: "u".into(),
            },
        ),
        (4, Event::RunStarted { run_id: "r".into() }),
        (5, start("each")),
        (6, start("note")),
        (7, finish("note")),
        (8, start("note")),
        (9, finish("note")),
        (10, finish("each")),
    ];
    let out = translate_all("t", &events);
    assert_eq!(
        out[0].event,
        json!({"type": "RUN_STARTED", "threadId": "t", "runId": "r"})
    );
    assert_eq!(out[0].seq, 4);
    let names: Vec<&str> = out
        .iter()
        .filter(|t| t.event["type"] == "STEP_STARTED")
        .map(|t| t.event["stepName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["each", "note", "note#2"]);
    assert!(!types(&out).iter().any(|t| t.starts_with("TEXT")));
}

#[test]
fn a_pause_closes_what_is_open_and_a_page_action_is_a_frontend_tool_call() {
    let page = Interrupt::new(InterruptReason::PageAction, "fill", "Check it")
        .page_action("fill_form".into(), json!({"text": "x"}));
    let card = Interrupt::new(InterruptReason::ConversationAction, "ask", "OK?")
        .buttons(vec!["approve".into(), "reply".into()]);
    let mut t = Translator::new("t");
    t.push(1, &Event::RunStarted { run_id: "r".into() });
    t.push(2, &start("fill"));
    t.push(
        3,
        &Event::TextMessageStart {
            message_id: "m".into(),
            role: Role::Assistant,
        },
    );
    let fin = |interrupts| Event::RunFinished {
        run_id: "r".into(),
        outcome: Outcome::Interrupt { interrupts },
        usage: Usage::default(),
    };
    let out = t.push(4, &fin(vec![page.clone()]));
    assert_eq!(
        types(&out),
        [
            "TEXT_MESSAGE_END",
            "STEP_FINISHED",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "RUN_FINISHED"
        ]
    );
    let last = &out.last().unwrap().event;
    assert_eq!(
        last["outcome"],
        json!({"type": "success", "pendingToolCallIds": [page.id]})
    );
    assert!(last.get("usage").is_none());
    assert!(!t.run_open());
    // A card with a reply button asks for input.
    let out = t.push(5, &fin(vec![card.clone()]));
    assert_eq!(types(&out), ["RUN_STARTED", "RUN_FINISHED"]);
    let i = &out[1].event["outcome"]["interrupts"][0];
    assert_eq!(i["reason"], "input_required");
    assert_eq!(i["metadata"]["buttons"], json!(["approve", "reply"]));
}

#[test]
fn a_cancelled_pause_is_a_whole_run_with_a_cancelled_outcome() {
    let mut t = Translator::new("t");
    let out = t.push(
        9,
        &Event::RunError {
            run_id: "r".into(),
            code: ErrorCode::Cancelled,
            message: "stop".into(),
        },
    );
    assert_eq!(types(&out), ["RUN_STARTED", "RUN_FINISHED"]);
    assert_eq!(out[1].event["outcome"], json!({"type": "cancelled"}));
    let out = t.push(
        10,
        &Event::RunError {
            run_id: "r2".into(),
            code: ErrorCode::LlmError,
            message: "down".into(),
        },
    );
    assert_eq!(types(&out), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(out[1].event["code"], "llm_error");
}

#[test]
fn reasoning_is_wrapped_in_reasoning_events() {
    let mut t = Translator::new("t");
    t.push(1, &Event::RunStarted { run_id: "r".into() });
    let out = t.push(
        2,
        &Event::ReasoningMessageContent {
            message_id: "x".into(),
            delta: "hm".into(),
        },
    );
    assert_eq!(
        types(&out),
        [
            "REASONING_START",
            "REASONING_MESSAGE_START",
            "REASONING_MESSAGE_CONTENT"
        ]
    );
    let out = t.push(
        3,
        &Event::TextMessageStart {
            message_id: "m".into(),
            role: Role::Assistant,
        },
    );
    assert_eq!(
        types(&out),
        [
            "REASONING_MESSAGE_END",
            "REASONING_END",
            "TEXT_MESSAGE_START"
        ]
    );
}
