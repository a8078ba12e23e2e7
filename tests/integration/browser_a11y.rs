//! Accessibility of the demo page, checked with axe-core (vendored, pinned: see
//! `static/vendor/README.md`) in real Chromium, in light and dark mode, in the states a person
//! meets: first load, an action card pending, a page action pending, a run finished, the graph
//! view. No serious or critical violation is allowed. The same walk takes the screenshots
//! (desktop 1280×800 and phone 390×844, light and dark) into `target/screenshots/`, or into the
//! committed `docs/screenshots/` with `PARLEY_UPDATE_SCREENSHOTS=1` (see `screenshots_dir`).

use serde_json::{json, Value};

use crate::browser::*;
use crate::common::*;

/// axe-core 4.14.1, injected into the page by the test (the server does not serve it).
const AXE: &str = include_str!("../../static/vendor/axe.min.js");

/// Run axe on the whole page; return the serious and critical violations (with up to five
/// offending elements each).
async fn axe_violations(b: &Browser) -> Value {
    let loaded = b.js("return typeof window.axe === 'object'").await;
    if loaded != json!(true) {
        b.js(&format!("{AXE}\n;return true")).await;
    }
    let v = b
        .js("return window.axe.run(document).then(r => ({passes: r.passes.length, bad: r.violations\
            .filter(v => v.impact === 'serious' || v.impact === 'critical')\
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ' :: ' + n.failureSummary)}))}))")
        .await;
    // axe really looked at the page (it checks colour contrast, names, roles…).
    assert!(
        v["passes"].as_u64().unwrap_or(0) > 10,
        "axe-core did not run: {v}"
    );
    v["bad"].clone()
}

async fn assert_accessible(b: &Browser, state: &str, mode: &str) {
    // Animations are off (reduced motion), but let a transition that is under way settle.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let v = axe_violations(b).await;
    assert_eq!(
        v,
        json!([]),
        "axe-core: serious or critical violations in {mode} mode, state '{state}'"
    );
}

/// Save `desktop-<mode>-<name>.png` and `phone-<mode>-<name>.png` (no focused field: a caret
/// would make each run's PNG differ). `phone_prep` runs at the phone size before its shot.
async fn shots(b: &Browser, mode: &str, name: &str, phone_prep: &str) {
    let dir = screenshots_dir();
    b.js("document.activeElement && document.activeElement.blur(); return true")
        .await;
    b.screenshot(&dir.join(format!("desktop-{mode}-{name}.png")))
        .await;
    b.set_viewport(390, 844).await;
    b.wait(
        "the phone layout",
        "return matchMedia('(max-width: 859px)').matches",
    )
    .await;
    if !phone_prep.is_empty() {
        b.js(phone_prep).await;
    }
    b.js("document.activeElement && document.activeElement.blur(); const c = document.getElementById('chat'); c.scrollTop = c.scrollHeight; return true")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    b.screenshot(&dir.join(format!("phone-{mode}-{name}.png")))
        .await;
    b.js("document.getElementById('scrim').hidden || document.getElementById('scrim').click(); return true")
        .await;
    b.set_viewport(1280, 800).await;
}

async fn walk(dark: bool) {
    let mode = if dark { "dark" } else { "light" };
    let s = Server::start();
    let b = if dark {
        Browser::open_with(&s, DARK_MODE).await
    } else {
        Browser::open(&s).await
    };
    assert_eq!(
        b.js("return matchMedia('(prefers-color-scheme: dark)').matches")
            .await,
        json!(dark),
        "the page sees the colour scheme of this walk"
    );

    // First load.
    b.select_assistant("expense_demo").await;
    b.wait_visible("[data-testid=welcome]").await;
    assert_accessible(&b, "first load", mode).await;

    // A card pending.
    b.click("[data-testid=prologue]").await;
    b.wait_visible("[data-testid=action-card]").await;
    b.wait(
        "the drafted claim",
        "const m = document.querySelector('[data-testid=message-assistant]'); return m && !m.classList.contains('streaming')",
    )
    .await;
    assert_accessible(&b, "card pending", mode).await;
    shots(&b, mode, "card", "").await;

    // The graph view, waiting at the card.
    b.click("[data-testid=graph-button]").await;
    b.wait_visible("[data-testid=graph-svg]").await;
    assert_accessible(&b, "graph view", mode).await;
    shots(&b, mode, "graph", "").await;
    b.click("#graph-close").await;

    // A page action pending.
    b.click("[data-testid=action-card] [data-action=approve]")
        .await;
    b.wait(
        "the claim form to wait",
        "return !document.getElementById('claim-waiting').hidden && document.getElementById('claim-amount').value !== ''",
    )
    .await;
    assert_accessible(&b, "page action pending", mode).await;
    shots(
        &b,
        mode,
        "page-action",
        "document.getElementById('panel-toggle').click(); return true",
    )
    .await;

    // Run finished, with a result card.
    b.click("[data-testid=claim-submit]").await;
    b.wait_idle(UI_WAIT).await;
    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "completed", UI_WAIT).await;
    b.assert_no_errors().await;
    assert_accessible(&b, "run finished", mode).await;
    drop(b);
    drop(s);
    result_walk(mode, dark).await;
}

/// A run that finished with an output: its result card.
async fn result_walk(mode: &str, dark: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("review_summary.json"),
        serde_json::to_vec(&json!({
            "title": "Review summary",
            "description": "Sums up a batch of reviews",
            "welcomeMessage": "Paste reviews, one per line.",
            "prologues": ["Great blender!\nBroke after two days."],
            "outputArgs": [
                {"name": "summary", "type": "string", "title": "Summary"},
                {"name": "keywords", "type": "array", "title": "Keywords"},
                {"name": "published", "type": "number", "title": "Published"},
                {"name": "rejected", "type": "number", "title": "Rejected"}
            ],
            "nodes": [
                {"id": "start", "type": "start", "title": "Start"},
                {"id": "note", "type": "reply", "title": "Report",
                 "text": "I read **2 reviews**:\n\n1. *Great blender!* — published\n2. *Broke after two days.* — kept for a human"},
                {"id": "end", "type": "end", "title": "End", "outputs": {
                    "summary": "One positive review was published; one complaint about a broken blender is kept for a person to answer.",
                    "keywords": ["blender", "broken", "quality"],
                    "published": 1, "rejected": 1}}
            ],
            "edges": [{"from": "start", "to": "note"}, {"from": "note", "to": "end"}]
        }))
        .unwrap(),
    )
    .unwrap();
    let s = Server::start_with(Options {
        assistants: dir.path().to_path_buf(),
        ..Options::default()
    });
    let b = if dark {
        Browser::open_with(&s, DARK_MODE).await
    } else {
        Browser::open(&s).await
    };
    b.select_assistant("review_summary").await;
    b.click("[data-testid=prologue]").await;
    b.wait_visible("[data-testid=result-card]").await;
    b.wait_idle(UI_WAIT).await;
    assert_accessible(&b, "run finished (result)", mode).await;
    shots(&b, mode, "result", "").await;
    b.assert_no_errors().await;
}

#[tokio::test]
async fn accessibility_light_mode() {
    walk(false).await;
}

#[tokio::test]
async fn accessibility_dark_mode() {
    walk(true).await;
}
