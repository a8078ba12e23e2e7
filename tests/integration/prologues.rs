//! Every prologue of every example assistant (`assistants/*.json`) reaches the feature it is
//! there to show, with a sensible answer, on the built-in offline model: one test per prologue,
//! over the real server's WebSocket (or `invoke` for the automated Translator), answering each
//! pause the way a person or the demo page would. `every_prologue_has_its_test` keeps the list
//! below in step with the files.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::*;

/// The prologues these tests cover, by assistant: a new or changed prologue needs its test.
const COVERED: &[(&str, &str)] = &[
    ("batch_review", "Great blender, smooth soups in a minute!\nBroke after two days, total junk.\nBuy cheap watches at spam-site dot com"),
    ("expense_claim", "I took a taxi to the airport for 42 EUR"),
    ("expense_claim", "Hotel in Berlin for two nights, 780 EUR, customer visit"),
    ("expense_claim", "Team lunch with the Acme account, 126.50 USD"),
    ("onboarding", "How do I create my first invoice?"),
    ("onboarding", "Where do I add my company logo?"),
    ("onboarding", "How much is 19% VAT on 1250?"),
    ("support_desk", "Was invoice INV-1001 paid?"),
    ("support_desk", "I was charged twice for invoice INV-1002, please refund it"),
    ("support_desk", "The app crashes when I log in"),
    ("translator", "Our office will be closed on Friday for the company summit. Urgent requests go to the on-call team."),
    ("translator", "Thank you for your order! Your parcel ships within two working days."),
];

fn repo_assistants() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants")
}

fn server() -> Server {
    Server::start_with(Options {
        assistants: repo_assistants(),
        ..Options::default()
    })
}

/// A tool call as the events show it.
#[derive(Debug)]
struct Call {
    name: String,
    args: Value,
    result: Option<Value>,
}

/// What one prologue's conversation did, from the first message to the end of the run.
#[derive(Debug, Default)]
struct Trace {
    frames: Vec<Value>,
    interrupts: Vec<Value>,
    /// The assistant's text, all segments.
    text: String,
    /// The last `RUN_FINISHED`'s outcome.
    outcome: Value,
}

impl Trace {
    fn calls(&self) -> Vec<Call> {
        let mut calls: Vec<(String, Call, String)> = Vec::new();
        for f in &self.frames {
            let e = &f["event"];
            let id = e["toolCallId"].as_str().unwrap_or_default().to_string();
            match e["type"].as_str() {
                Some("TOOL_CALL_START") => calls.push((
                    id,
                    Call {
                        name: e["toolCallName"].as_str().unwrap_or_default().to_string(),
                        args: Value::Null,
                        result: None,
                    },
                    String::new(),
                )),
                Some("TOOL_CALL_ARGS") => {
                    if let Some(c) = calls.iter_mut().find(|c| c.0 == id) {
                        c.2.push_str(e["delta"].as_str().unwrap_or_default());
                    }
                }
                Some("TOOL_CALL_RESULT") => {
                    if let Some(c) = calls.iter_mut().find(|c| c.0 == id) {
                        let content = e["content"].as_str().unwrap_or_default();
                        c.1.result =
                            Some(serde_json::from_str(content).unwrap_or_else(|_| json!(content)));
                    }
                }
                _ => {}
            }
        }
        calls
            .into_iter()
            .map(|(_, mut c, args)| {
                c.args = serde_json::from_str(&args).unwrap_or(Value::Null);
                c
            })
            .collect()
    }

    fn call(&self, name: &str) -> Call {
        self.calls()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no call of {name}: {:?}", self.calls()))
    }
}

/// Send `content` to `assistant` and answer every pause: a page action with its params and
/// `submitted: true`, a card or a tool confirmation with `approve`.
async fn run(s: &Server, assistant: &str, content: &str, args: Value) -> Trace {
    let mut c = Client::connect(s).await;
    let ack = c
        .ok(json!({"type": "send", "assistant": assistant, "content": content, "args": args}))
        .await;
    let conv = ack["conversationId"].as_str().unwrap().to_string();
    let mut t = Trace::default();
    loop {
        let ev = c.run_events(&conv).await;
        let last = ev.last().unwrap()["event"].clone();
        t.text.push_str(&assistant_text(&ev));
        t.frames.extend(ev);
        assert_eq!(last["type"], "RUN_FINISHED", "{assistant}: {last}");
        if last["outcome"]["type"] == "success" {
            t.outcome = last["outcome"].clone();
            return t;
        }
        let i = last["outcome"]["interrupts"][0].clone();
        let iid = i["id"].as_str().unwrap().to_string();
        let frame = if i["reason"] == "page_action" {
            let mut v = i["params"].clone();
            if let Some(o) = v.as_object_mut() {
                o.insert("submitted".into(), json!(true));
            }
            json!({"type": "resume", "conversationId": conv, "interruptId": iid, "value": v})
        } else {
            json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"})
        };
        t.interrupts.push(i);
        assert!(
            t.interrupts.len() < 6,
            "{assistant} keeps asking: {:?}",
            t.interrupts
        );
        c.ok(frame).await;
    }
}

/// The reply reads as words, not a dump of JSON.
fn assert_prose(text: &str) {
    assert!(!text.trim().is_empty(), "no reply");
    assert!(
        !text.contains('{') && !text.contains("\":"),
        "raw JSON in {text:?}"
    );
    assert!(
        !text.contains("I can only restate"),
        "no answer in {text:?}"
    );
}

#[test]
fn every_prologue_has_its_test() {
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo_assistants()).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let id = p.file_stem().unwrap().to_string_lossy().to_string();
        let def: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        for pr in def["prologues"].as_array().cloned().unwrap_or_default() {
            files.push((id.clone(), pr.as_str().unwrap().to_string()));
        }
    }
    files.sort();
    let mut covered: Vec<(String, String)> = COVERED
        .iter()
        .map(|(a, p)| (a.to_string(), p.to_string()))
        .collect();
    covered.sort();
    assert_eq!(files, covered);
}

// ------------------------------------------------------------------------------ support desk

#[tokio::test]
async fn support_desk_looks_the_invoice_up_and_says_it_was_paid() {
    let s = server();
    let t = run(&s, "support_desk", COVERED[7].1, json!({})).await;
    let call = t.call("find_invoice");
    assert_eq!(call.args, json!({"key": "INV-1001"}));
    assert_eq!(call.result.as_ref().unwrap()["value"]["status"], "paid");
    assert!(
        t.interrupts.is_empty(),
        "no refund for a paid invoice: {:?}",
        t.interrupts
    );
    assert_prose(&t.text);
    assert!(
        t.text.contains("status paid") && t.text.contains("49.9"),
        "{}",
        t.text
    );
    assert_eq!(t.outcome["result"]["team"], "billing");
}

#[tokio::test]
async fn support_desk_proposes_the_refund_of_the_double_charge_for_approval() {
    let s = server();
    let t = run(&s, "support_desk", COVERED[8].1, json!({})).await;
    let names: Vec<String> = t.calls().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["find_invoice", "issue_refund"], "looked up first");
    assert_eq!(t.call("find_invoice").args["key"], "INV-1002");
    assert_eq!(t.interrupts.len(), 1, "{:?}", t.interrupts);
    assert_eq!(t.interrupts[0]["reason"], "tool_confirmation");
    let refund = t.call("issue_refund");
    assert_eq!(refund.args["invoice"], "INV-1002");
    assert_eq!(
        refund.args["amount"],
        json!(120),
        "the invoice's amount, not its number"
    );
    assert!(
        t.interrupts[0].to_string().contains("120"),
        "the confirmation shows the amount: {}",
        t.interrupts[0]
    );
    assert_prose(&t.text);
    assert!(t.text.contains("120"), "{}", t.text);
}

#[tokio::test]
async fn support_desk_gives_the_known_workaround_for_a_crash() {
    let s = server();
    let t = run(&s, "support_desk", COVERED[9].1, json!({})).await;
    assert_eq!(t.call("known_issues").args, json!({"key": "crash"}));
    assert_prose(&t.text);
    assert!(t.text.contains("update to 5.2.1"), "{}", t.text);
    assert_eq!(t.outcome["result"]["team"], "technical");
}

// -------------------------------------------------------------------------------- onboarding

#[tokio::test]
async fn onboarding_explains_invoices_and_opens_the_new_invoice_screen() {
    let s = server();
    let t = run(&s, "onboarding", COVERED[4].1, json!({})).await;
    assert_eq!(t.call("help_article").args, json!({"key": "invoice"}));
    let pages: Vec<&Value> = t
        .interrupts
        .iter()
        .filter(|i| i["reason"] == "page_action")
        .collect();
    assert_eq!(pages.len(), 1, "{:?}", t.interrupts);
    assert_eq!(pages[0]["action"], "navigate");
    assert_eq!(pages[0]["params"]["screen"], "new_invoice");
    assert_prose(&t.text);
    assert!(
        t.text.contains("Invoices > New invoice"),
        "the article in the reply: {}",
        t.text
    );
}

#[tokio::test]
async fn onboarding_explains_the_logo_and_opens_branding_settings() {
    let s = server();
    let t = run(&s, "onboarding", COVERED[5].1, json!({})).await;
    assert_eq!(t.call("help_article").args, json!({"key": "logo"}));
    assert_eq!(t.interrupts.len(), 1, "{:?}", t.interrupts);
    assert_eq!(t.interrupts[0]["action"], "navigate");
    assert_eq!(t.interrupts[0]["params"]["screen"], "settings_branding");
    assert_prose(&t.text);
    assert!(t.text.contains("Upload logo"), "{}", t.text);
}

#[tokio::test]
async fn onboarding_computes_the_vat_with_the_calculator() {
    let s = server();
    let t = run(&s, "onboarding", COVERED[6].1, json!({})).await;
    let calc = t.call("calculator");
    assert_eq!(
        calc.result.as_ref().unwrap()["result"],
        json!(237.5),
        "{:?}",
        calc
    );
    assert!(t.interrupts.is_empty(), "{:?}", t.interrupts);
    assert_prose(&t.text);
    assert!(t.text.contains("237.5"), "{}", t.text);
}

// ----------------------------------------------------------------------------- expense claim

/// The claim form's params, after checking that the claim went through to `submitted`.
fn claim_form(t: &Trace) -> Value {
    let fill: Vec<&Value> = t
        .interrupts
        .iter()
        .filter(|i| i["reason"] == "page_action")
        .collect();
    assert_eq!(fill.len(), 1, "{:?}", t.interrupts);
    assert_eq!(fill[0]["action"], "fill_claim_form");
    assert_eq!(t.outcome["result"]["status"], "submitted", "{}", t.outcome);
    fill[0]["params"].clone()
}

#[tokio::test]
async fn expense_claim_files_a_small_taxi_ride_without_approval() {
    let s = server();
    let t = run(
        &s,
        "expense_claim",
        COVERED[1].1,
        json!({"department": "sales"}),
    )
    .await;
    let form = claim_form(&t);
    assert!(t
        .interrupts
        .iter()
        .all(|i| i["reason"] != "conversation_action"));
    assert_eq!(form["amount"], json!(42));
    assert_eq!(form["currency"], "EUR");
    assert_eq!(form["purpose"], "a taxi to the airport", "{form}");
    assert!(
        t.text.contains("42 EUR for a taxi to the airport"),
        "{}",
        t.text
    );
}

#[tokio::test]
async fn expense_claim_asks_approval_for_a_hotel_over_the_limit() {
    let s = server();
    let t = run(
        &s,
        "expense_claim",
        COVERED[2].1,
        json!({"department": "r&d"}),
    )
    .await;
    let card = &t.interrupts[0];
    assert_eq!(card["reason"], "conversation_action", "{card}");
    let shown = card.to_string();
    assert!(
        shown.contains("780") && shown.contains("hotel in Berlin"),
        "{shown}"
    );
    let form = claim_form(&t);
    assert_eq!(form["amount"], json!(780));
    assert_eq!(form["department"], "r&d");
    let purpose = form["purpose"].as_str().unwrap();
    assert!(
        purpose.starts_with("hotel in Berlin") && purpose.contains("customer visit"),
        "{purpose}"
    );
}

#[tokio::test]
async fn expense_claim_reads_a_team_lunch_in_dollars() {
    let s = server();
    let t = run(
        &s,
        "expense_claim",
        COVERED[3].1,
        json!({"department": "sales"}),
    )
    .await;
    let form = claim_form(&t);
    assert_eq!(form["amount"], json!(126.5));
    assert_eq!(form["currency"], "USD");
    assert_eq!(
        form["purpose"], "team lunch with the Acme account",
        "{form}"
    );
}

// ------------------------------------------------------------------------------ batch review

#[tokio::test]
async fn batch_review_publishes_honest_reviews_and_rejects_spam() {
    let s = server();
    let t = run(&s, "batch_review", COVERED[0].1, json!({})).await;
    let text = &t.text;
    assert!(text.contains("1/3 PUBLISH (positive)"), "{text}");
    assert!(
        text.contains("2/3 PUBLISH (negative)"),
        "an honest complaint is published: {text}"
    );
    assert!(text.contains("3/3 REJECT"), "spam is rejected: {text}");
    assert!(text.contains("spam"), "and says why: {text}");
    assert!(text.contains("Moderated 3 reviews"), "{text}");
    assert_eq!(t.outcome["result"]["count"], json!(3));
}

// -------------------------------------------------------------------------------- translator

async fn invoke_translator(content: &str) -> Value {
    let s = server();
    let r = http()
        .post(s.http("/api/assistants/translator/invoke"))
        .json(&json!({"content": content, "args": {"targetLanguage": "German"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    body["output"].clone()
}

fn assert_translated(out: &Value, key_phrase: &str, keyword: &str) {
    let translation = out["translation"].as_str().unwrap();
    assert!(
        translation.contains("German") && translation.contains(key_phrase),
        "{out}"
    );
    let summary = out["summary"].as_str().unwrap();
    assert!(
        summary.contains(key_phrase),
        "the summary keeps the point: {out}"
    );
    let kws: Vec<String> = out["keywords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_lowercase())
        .collect();
    assert!(kws.iter().any(|k| k.contains(keyword)), "{out}");
    assert_eq!(out["language"], "German");
}

#[tokio::test]
async fn translator_translates_and_summarizes_the_office_notice() {
    let out = invoke_translator(COVERED[10].1).await;
    assert_translated(&out, "closed on Friday", "office");
}

#[tokio::test]
async fn translator_translates_and_summarizes_the_order_note() {
    let out = invoke_translator(COVERED[11].1).await;
    assert_translated(&out, "parcel ships", "parcel");
}
