//! Browser tests of the demo page as a person uses it (issue 19): the claim form belongs to its
//! conversation, the typed-answer rule is shown for each kind of pause, each card keeps its own
//! answer, Markdown is rendered and sanitised, results show as cards, text direction follows
//! the text, the graph view, the smaller things (counter, every assistant's conversations).
//!
//! Helpers (`Browser`, waits) are in `browser.rs`. The assistants used here are written by the
//! tests into a temporary directory, next to copies of the fixtures, so each test shows exactly
//! the pause or output it is about without depending on a model's answers.

use std::path::Path;

use serde_json::{json, Value};

use crate::browser::*;
use crate::common::*;

/// Assistants made for these tests (file stem = id).
fn test_assistants() -> Vec<(&'static str, Value)> {
    vec![
        (
            // A card whose typed reply loops back to the card (like expense_claim's approval).
            "loop_card",
            json!({
                "title": "Loop card",
                "description": "A card that a typed reply sends back to",
                "nodes": [
                    {"id": "start", "type": "start", "title": "Start"},
                    {"id": "card", "type": "conversation_action", "title": "Ask for approval",
                     "message": "Approve {{ start.userInput }}?", "buttons": ["approve", "reject"]},
                    {"id": "remind", "type": "reply", "title": "Remind", "text": "Please use the buttons."},
                    {"id": "yes", "type": "reply", "title": "Approved", "text": "Approved."},
                    {"id": "no", "type": "reply", "title": "Rejected", "text": "Rejected."},
                    {"id": "end", "type": "end", "title": "End"}
                ],
                "edges": [
                    {"from": "start", "to": "card"},
                    {"from": "card", "port": "reply", "to": "remind"},
                    {"from": "remind", "to": "card"},
                    {"from": "card", "port": "approve", "to": "yes"},
                    {"from": "card", "port": "reject", "to": "no"},
                    {"from": "yes", "to": "end"},
                    {"from": "no", "to": "end"}
                ]
            }),
        ),
        (
            "markdown",
            json!({
                "title": "Markdown",
                "description": "Replies with Markdown and a script that must not run",
                "nodes": [
                    {"id": "start", "type": "start"},
                    {"id": "answer", "type": "reply",
                     "text": "Here is **bold** text.\n\n- first\n- second\n\n```\nlet x = 1;\n```\n\n<script>window.__pwned = 1</script><img src=\"x\" onerror=\"window.__pwned = 2\"> [link](javascript:window.__pwned=3) مرحبا بالعالم"},
                    {"id": "end", "type": "end"}
                ],
                "edges": [{"from": "start", "to": "answer"}, {"from": "answer", "to": "end"}]
            }),
        ),
        (
            "result",
            json!({
                "title": "Result",
                "description": "Ends with an output to show as a card",
                "inputArgs": [{"name": "tags", "type": "array", "title": "Tags", "default": ["a", "b"]}],
                "outputArgs": [
                    {"name": "summary", "type": "string", "title": "Summary"},
                    {"name": "keywords", "type": "array", "title": "Keywords"},
                    {"name": "count", "type": "number", "title": "Reviews read"}
                ],
                "nodes": [
                    {"id": "start", "type": "start"},
                    {"id": "end", "type": "end", "outputs": {
                        "summary": "The customer liked the blender but it broke after two days of use.",
                        "keywords": ["blender", "broken", "refund"],
                        "count": 3}}
                ],
                "edges": [{"from": "start", "to": "end"}]
            }),
        ),
        (
            "refund",
            json!({
                "title": "Refund",
                "description": "Asks to confirm a tool call",
                "tools": {"issue_refund": {"kind": "builtin", "function": "echo", "confirm": true,
                                           "description": "Issue a refund"}},
                "nodes": [
                    {"id": "start", "type": "start"},
                    {"id": "pay", "type": "function", "title": "Refund", "tool": "issue_refund",
                     "args": {"invoice": "INV-1002", "amount": 120, "currency": "EUR"}},
                    {"id": "done", "type": "reply", "text": "Done."},
                    {"id": "end", "type": "end"}
                ],
                "edges": [{"from": "start", "to": "pay"}, {"from": "pay", "to": "done"}, {"from": "done", "to": "end"}]
            }),
        ),
        (
            "navigate",
            json!({
                "title": "Navigate",
                "description": "Asks the page for an action it cannot run",
                "nodes": [
                    {"id": "start", "type": "start"},
                    {"id": "go", "type": "page_action", "action": "navigate", "params": {"to": "/settings"},
                     "prompt": "Open the settings screen."},
                    {"id": "done", "type": "reply", "text": "You said: {{ go.value }}"},
                    {"id": "end", "type": "end"}
                ],
                "edges": [{"from": "start", "to": "go"}, {"from": "go", "to": "done"}, {"from": "done", "to": "end"}]
            }),
        ),
    ]
}

/// A server whose assistants are the fixtures plus [`test_assistants`]. The directory must live
/// as long as the server.
fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(fixtures()).expect("fixtures").flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // `broken.json` is refused at load on purpose; leave it out.
        if name.ends_with(".json") && name != "broken.json" {
            std::fs::copy(e.path(), dir.path().join(&*name)).expect("copy fixture");
        }
    }
    for (id, def) in test_assistants() {
        std::fs::write(
            dir.path().join(format!("{id}.json")),
            serde_json::to_vec_pretty(&def).unwrap(),
        )
        .expect("write assistant");
    }
    let s = Server::start_with(Options {
        assistants: dir.path().to_path_buf(),
        ..Options::default()
    });
    (s, dir)
}

/// The composer's pause line: `[visible, reason, text, send label, send disabled]`.
async fn composer_target(b: &Browser) -> Value {
    b.js("const t = document.getElementById('composer-target'); const s = document.getElementById('send-button');\
          return [!t.hidden, t.dataset.reason, t.innerText, s.innerText.trim(), s.disabled]")
        .await
}

/// Wait for the claim form to wait for the conversation on screen.
async fn wait_claim_waiting(b: &Browser) {
    b.wait(
        "the claim form to wait",
        "return !document.getElementById('claim-waiting').hidden && document.getElementById('claim-amount').value !== ''",
    )
    .await;
}

// ================================================================================ tests

/// Item 1: a waiting page action belongs to its conversation. Switching away shows an idle
/// form that cannot answer it; coming back shows the request again, naming the conversation,
/// and Submit answers that conversation only.
#[tokio::test]
async fn claim_form_belongs_to_its_conversation() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;
    b.select_assistant("expense_demo").await;
    // The assistant can ask for the form, so the (sample) form is shown.
    b.wait_visible("#claim-panel").await;
    b.click("[data-testid=prologue]").await;
    b.click("[data-testid=action-card] [data-action=approve]")
        .await;
    wait_claim_waiting(&b).await;
    let first = b.conversation_id().await;
    assert!(b
        .text_of("[data-testid=claim-answers]")
        .await
        .contains("I took a taxi"));

    // A new conversation: the form is idle, empty, and Submit cannot answer anything.
    b.click("[data-testid=new-conversation]").await;
    b.wait(
        "the idle form",
        "return document.getElementById('claim-waiting').hidden && document.getElementById('claim-submit').disabled \
         && document.getElementById('claim-amount').value === '' && document.getElementById('claim-answers').hidden",
    )
    .await;
    // Even a forced submit (Enter in a field) answers nothing.
    b.js("document.getElementById('claim-form').requestSubmit(); return true")
        .await;
    assert_eq!(
        b.text_of("#claim-status").await,
        "No assistant in this conversation is waiting for this form."
    );
    // Another assistant with no page action: the form is not shown at all.
    b.select_assistant("chat").await;
    b.wait(
        "the form to be hidden",
        "return document.getElementById('claim-panel').hidden",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(conversation_status(&s, &first).await, "paused");

    // Back to the first conversation (from the list, which shows every assistant's, with a
    // badge for the waiting one): its own request, with its own values.
    let item = format!("[data-testid=conversation-item][data-id='{first}']");
    b.wait_visible(&format!("{item} [data-testid=waiting-badge]"))
        .await;
    b.click(&format!("{item} .conv-open")).await;
    b.wait(
        "the first conversation's form again",
        "return !document.getElementById('claim-waiting').hidden && document.getElementById('claim-amount').value === '42.5'",
    )
    .await;
    b.click("[data-testid=claim-submit]").await;
    wait_status(&s, &first, "completed", UI_WAIT).await;
    b.wait(
        "the reply",
        "return Array.from(document.querySelectorAll('[data-testid=message-assistant]')).some(m => m.innerText.startsWith('Claim filed: 42.5 EUR'))",
    )
    .await;
    b.assert_no_errors().await;
}

/// Item 2: before a message is sent at a pause, the composer says what it will do there —
/// at a card (a reply), at a page action (its value, in place of the page's answer), at a
/// tool confirmation (nothing: the buttons answer it). A page action this page cannot run,
/// answered by a message, says so instead of "Done on the page".
#[tokio::test]
async fn typed_answer_rule_is_shown_for_each_pause() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;

    // Nothing paused: no line, the button says Send.
    b.select_assistant("approval").await;
    assert_eq!(
        composer_target(&b).await,
        json!([false, "", "", "Send", false])
    );

    // A card.
    b.send_message("a new laptop").await;
    b.wait_visible("[data-testid=action-card]").await;
    b.wait_visible("[data-testid=composer-target]").await;
    let t = composer_target(&b).await;
    assert_eq!(t[1], "conversation_action", "{t}");
    assert_eq!(
        t[2],
        "Your message will answer: “Approve 'a new laptop'?” (as a reply)."
    );
    assert_eq!(t[3], "Answer", "{t}");

    // A page action the page runs (the claim form).
    b.click("[data-testid=new-conversation]").await;
    b.select_assistant("expense_demo").await;
    b.click("[data-testid=prologue]").await;
    b.click("[data-testid=action-card] [data-action=approve]")
        .await;
    wait_claim_waiting(&b).await;
    b.wait_visible("[data-testid=composer-target]").await;
    let t = composer_target(&b).await;
    assert_eq!(t[1], "page_action", "{t}");
    assert!(
        t[2].as_str()
            .unwrap()
            .starts_with("Your message will answer: Expense claim form"),
        "{t}"
    );

    // A tool confirmation: a message cannot answer it, and the page says so before sending.
    b.select_assistant("refund").await;
    b.send_message("refund please").await;
    b.wait_visible("[data-testid=action-card][data-reason=tool_confirmation]")
        .await;
    b.wait_visible("[data-testid=composer-target]").await;
    let t = composer_target(&b).await;
    assert_eq!(t[1], "tool_confirmation", "{t}");
    assert_eq!(
        t[2],
        "Answer the confirmation above first: Refund 120 EUR on INV-1002? Approve or Reject."
    );
    assert_eq!(t[4], true, "sending is disabled: {t}");
    // The card says it in words too; the call's JSON is behind a disclosure.
    assert!(b
        .text_of("[data-testid=action-card] .action-card-message")
        .await
        .contains("Refund 120 EUR on INV-1002?"));
    assert_eq!(
        b.js("return document.querySelector('[data-testid=action-card] details.json-disclosure').open")
            .await,
        json!(false)
    );
    // Enter does not send, and says why (no toast).
    b.send_message("yes do it").await;
    b.wait(
        "the warning hint",
        "return document.getElementById('composer-hint').classList.contains('hint-warn')",
    )
    .await;
    let conv = b.conversation_id().await;
    assert_eq!(stored_messages(&s, &conv).await.len(), 1);

    // A page action this page cannot run: answered by a typed message.
    b.select_assistant("navigate").await;
    b.send_message("go").await;
    b.wait_visible("[data-testid=page-action-note]").await;
    b.wait_visible("[data-testid=composer-target]").await;
    let t = composer_target(&b).await;
    assert_eq!(t[1], "page_action", "{t}");
    assert!(
        t[2].as_str()
            .unwrap()
            .starts_with("Your message will answer: Open the settings screen."),
        "{t}"
    );
    b.send_message("I opened it").await;
    b.wait(
        "the reply",
        "return Array.from(document.querySelectorAll('[data-testid=message-assistant]')).some(m => m.innerText === 'You said: I opened it')",
    )
    .await;
    let note = b.text_of("[data-testid=page-action-note]").await;
    assert!(
        note.contains("Answered in the chat")
            && !note.contains("Done on the page")
            && !note.contains("cannot run"),
        "{note}"
    );
    b.assert_no_errors().await;
}

/// Item 5: a card answered by a typed reply and the next card of the same step answered with
/// a button each show their own answer, live and after reopening.
#[tokio::test]
async fn each_card_keeps_its_own_answer_after_replay() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;
    b.select_assistant("loop_card").await;
    b.send_message("the budget").await;
    b.wait_visible("[data-testid=action-card]").await;
    b.wait_visible("[data-testid=composer-target]").await;
    b.send_message("not sure yet").await;
    b.wait(
        "the second card",
        "return document.querySelectorAll('[data-testid=action-card]').length === 2",
    )
    .await;
    b.js("const c = document.querySelectorAll('[data-testid=action-card]'); c[1].querySelector('[data-action=approve]').click(); return true")
        .await;
    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "completed", UI_WAIT).await;
    b.wait_idle(UI_WAIT).await;

    let statuses = "return Array.from(document.querySelectorAll('[data-testid=action-card]')).map(c => \
                    [c.querySelector('.action-card-status').innerText, c.querySelector('.chosen') ? c.querySelector('.chosen').dataset.action : null])";
    let want = json!([
        ["Answered with a reply: “not sure yet”", null],
        ["Answered: Approve", "approve"]
    ]);
    b.wait(
        "each card's own answer",
        &format!(
            "const v = (() => {{ {statuses} }})(); return JSON.stringify(v) === {} && v",
            json!(want.to_string())
        ),
    )
    .await;

    // Reopen: the replay gives the same answers.
    b.click("[data-testid=new-conversation]").await;
    b.click(&format!(
        "[data-testid=conversation-item][data-id='{conv}'] .conv-open"
    ))
    .await;
    b.wait(
        "the replayed cards",
        "return document.querySelectorAll('[data-testid=action-card]').length === 2",
    )
    .await;
    b.wait_idle(UI_WAIT).await;
    assert_eq!(b.js(statuses).await, want);
    assert_chat_matches_store(&b, &s, &conv).await;
}

/// Item 8: replies are Markdown, sanitised (a script, an event handler and a `javascript:`
/// link do nothing), with copy buttons; bubbles take their direction from their text.
#[tokio::test]
async fn markdown_is_rendered_and_sanitised() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;
    b.select_assistant("markdown").await;
    b.send_message("مرحبا").await;
    b.wait(
        "the rendered reply",
        "const m = document.querySelector('[data-testid=message-assistant] .bubble.markdown'); return !!m",
    )
    .await;
    b.wait_idle(UI_WAIT).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let v = b
        .js("const m = document.querySelector('[data-testid=message-assistant] .bubble');\
             const a = m.querySelector('a');\
             return {strong: m.querySelector('strong') && m.querySelector('strong').innerText,\
                     items: Array.from(m.querySelectorAll('li')).map(l => l.innerText),\
                     code: m.querySelector('pre code') && m.querySelector('pre code').innerText.trim(),\
                     codeCopy: !!m.querySelector('.code-block [data-testid=copy-button]'),\
                     scripts: document.querySelectorAll('#chat script').length,\
                     handlers: document.querySelectorAll('#chat [onerror]').length,\
                     jsLink: !!a && /^javascript:/i.test(a.getAttribute('href') || ''),\
                     pwned: window.__pwned === undefined ? null : window.__pwned,\
                     literalStars: m.innerText.includes('**')}")
        .await;
    assert_eq!(
        v,
        json!({"strong": "bold", "items": ["first", "second"], "code": "let x = 1;", "codeCopy": true,
               "scripts": 0, "handlers": 0, "jsLink": false, "pwned": null, "literalStars": false})
    );
    // Copy buttons on each message; the times are shown; dir="auto" on every bubble, and the
    // Arabic message is laid out right to left.
    let v = b
        .js("const ms = Array.from(document.querySelectorAll('#chat .message'));\
             return {copies: ms.map(m => !!m.querySelector('.message-meta [data-testid=copy-button]')),\
                     times: ms.map(m => !!m.querySelector('time').dataset.label),\
                     dirs: ms.map(m => m.querySelector('.bubble').getAttribute('dir')),\
                     userRtl: ms[0].querySelector('.bubble').matches(':dir(rtl)')}")
        .await;
    assert_eq!(
        v,
        json!({"copies": [true, true], "times": [true, true], "dirs": ["auto", "auto"], "userRtl": true})
    );
    b.assert_no_errors().await;
}

/// Item 6: a finished run's output is a card laid out from the assistant's output args.
#[tokio::test]
async fn result_card_shows_the_output_args() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;
    b.select_assistant("result").await;
    // An array arg is a list, one item a line (not raw JSON).
    assert_eq!(
        b.js("return document.getElementById('arg-tags').value")
            .await,
        json!("a\nb")
    );
    b.js("const t = document.getElementById('arg-tags'); t.value = 'red\\n green \\n\\nblue'; t.dispatchEvent(new Event('input')); return true")
        .await;
    b.send_message("go").await;
    b.wait_visible("[data-testid=result-card]").await;
    let conv = b.conversation_id().await;
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["args"]["tags"], json!(["red", "green", "blue"]));
    let v = b
        .js("const c = document.querySelector('[data-testid=result-card]');\
             return {text: c.querySelector('.result-card-text').innerText,\
                     rows: Array.from(c.querySelectorAll('table.kv tr')).map(r => r.querySelector('th').innerText),\
                     count: c.querySelector('table.kv tr:last-child td').innerText,\
                     chips: Array.from(c.querySelectorAll('.chip-static')).map(x => x.innerText),\
                     jsonHidden: !c.querySelector('details.json-disclosure').open}")
        .await;
    assert_eq!(
        v,
        json!({"text": "The customer liked the blender but it broke after two days of use.",
               "rows": ["Keywords", "Reviews read"], "count": "3",
               "chips": ["blender", "broken", "refund"], "jsonHidden": true})
    );
}

/// Item 11: the graph view opens from the chat, shows the nodes the run reached with their
/// titles and types, and highlights the node a paused run waits at; on a phone it fills the
/// screen.
#[tokio::test]
async fn graph_view_highlights_the_waiting_node() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;
    b.select_assistant("loop_card").await;
    b.send_message("the budget").await;
    b.wait_visible("[data-testid=action-card]").await;
    b.click("[data-testid=graph-button]").await;
    b.wait_visible("[data-testid=graph-svg]").await;
    let v = b
        .js("return Array.from(document.querySelectorAll('[data-testid=graph-svg] .graph-node')).map(g =>\
             [g.dataset.node, g.dataset.state, g.querySelector('.graph-title').textContent])")
        .await;
    let nodes = v.as_array().unwrap();
    assert!(
        nodes.iter().any(|n| n[0] == "start" && n[1] == "done"),
        "{v}"
    );
    let card = nodes
        .iter()
        .find(|n| n[0] == "card")
        .unwrap_or_else(|| panic!("the card node is shown: {v}"));
    assert_eq!(card[1], "waiting", "{v}");
    assert_eq!(
        b.js("return document.querySelectorAll('[data-testid=graph-svg] .graph-node.waiting').length")
            .await,
        json!(1)
    );
    // Closing it returns to the chat; on a phone it fills the screen.
    b.click("#graph-close").await;
    b.set_viewport(390, 844).await;
    b.click("[data-testid=graph-button]").await;
    b.wait_visible("[data-testid=graph-svg]").await;
    let r = b
        .js("const r = document.getElementById('graph-dialog').getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]")
        .await;
    assert_eq!(r, json!([390, 844]));
    b.assert_no_errors().await;
}

/// Item 11, the whole graph: every node of each example assistant is drawn, from the
/// definition's nodes and edges that the server sends (`graph` in `GET /api/assistants/{id}`).
#[tokio::test]
async fn graph_view_shows_every_node_of_each_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants");
    let s = Server::start_with(Options {
        assistants: root.clone(),
        ..Options::default()
    });
    let b = Browser::open(&s).await;
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let id = path.file_stem().unwrap().to_string_lossy().to_string();
        let def: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut want: Vec<String> = def["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        want.sort();
        b.select_assistant(&id).await;
        b.click("[data-testid=graph-button]").await;
        b.wait_visible("[data-testid=graph-svg]").await;
        let shown = b
            .js("return Array.from(document.querySelectorAll('[data-testid=graph-svg] .graph-node')).map(g => g.dataset.node).sort()")
            .await;
        assert_eq!(shown, json!(want), "{id}");
        b.click("#graph-close").await;
    }
}

/// Item 10: a counter warns before the server would refuse a long message; the pill says
/// "Connected"; the conversation list shows every assistant's conversations, with a badge for
/// a waiting one and a filter; one Tab stop per conversation.
#[tokio::test]
async fn composer_counter_and_conversation_list() {
    let (s, _dir) = server();
    let b = Browser::open(&s).await;
    assert_eq!(b.text_of("[data-testid=conn-state]").await, "Connected");
    b.select_assistant("approval").await;
    b.send_message("a new laptop").await;
    b.wait_visible("[data-testid=action-card]").await;
    let waiting = b.conversation_id().await;
    b.select_assistant("chat").await;
    b.wait_visible(&format!(
        "[data-testid=conversation-item][data-id='{waiting}'] [data-testid=waiting-badge]"
    ))
    .await;
    assert_eq!(b.text_of("[data-testid=waiting-count]").await, "1 waiting");
    let stops = b
        .js("return Array.from(document.querySelectorAll('[data-testid=conversation-item] button')).filter(x => x.tabIndex >= 0).length")
        .await;
    assert_eq!(stops, json!(1), "one Tab stop per conversation");
    // The filter: only this assistant's conversations (none yet).
    b.js("const f = document.getElementById('conversation-filter'); f.value = 'this'; f.dispatchEvent(new Event('change')); return true")
        .await;
    b.wait(
        "the filtered list",
        "return document.querySelectorAll('[data-testid=conversation-item]').length === 0",
    )
    .await;

    // The counter: a message over the limit cannot be sent, and the page says so.
    b.js("const i = document.getElementById('message-input'); i.value = 'x'.repeat(32769); i.dispatchEvent(new Event('input')); return true")
        .await;
    let v = b
        .js("const c = document.getElementById('char-count'); return [!c.hidden, c.classList.contains('over'), c.innerText, document.getElementById('send-button').disabled]")
        .await;
    assert_eq!(v, json!([true, true, "32,769 / 32,768", true]));
    b.assert_no_errors().await;
}
