//! Tests of what the example assistants' prologues need: identifiers that are not amounts,
//! arithmetic from questions, labelled input lines, judged enums (sentiment, spam) and tool
//! chains in the order the system prompt names the tools.

use super::extract::*;
use super::tests::{answer_json, text_of};
use super::*;
use crate::llm::{ChatMessage, ToolCall, ToolDef};
use serde_json::{json, Value};

fn with_system(system: &str, text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::system(system), ChatMessage::user(text)],
        ..Default::default()
    }
}

#[test]
fn identifiers_are_not_amounts() {
    assert_eq!(
        find_identifier("Was invoice INV-1001 paid?").as_deref(),
        Some("INV-1001")
    );
    assert_eq!(
        find_identifier("order_12 is late").as_deref(),
        Some("order_12")
    );
    assert_eq!(find_identifier("I paid 42EUR, about 2nd of May"), None);
    assert_eq!(find_amount("refund INV-1002 please"), None);
    let a = find_amount("refund 30 EUR of INV-1002").unwrap();
    assert_eq!((a.value, a.currency.as_deref()), (30.0, Some("EUR")));
    // A key is the identifier, not a slug of the words.
    let schema = json!({"type": "object", "required": ["key"],
                        "properties": {"key": {"type": "string"}}});
    assert_eq!(
        answer_json(&schema, "Was invoice INV-1001 paid?"),
        json!({"key": "INV-1001"})
    );
}

#[test]
fn expressions_from_questions() {
    assert_eq!(
        find_expression("How much is 19% VAT on 1250?").as_deref(),
        Some("1250 * 19 / 100")
    );
    assert_eq!(
        find_expression("what is 2 * (3 + 4)?").as_deref(),
        Some("2 * (3 + 4)")
    );
    assert_eq!(find_expression("about 7 apples").as_deref(), Some("7"));
    assert_eq!(find_expression("no numbers"), None);
}

#[test]
fn labelled_lines_give_their_longest_value() {
    let schema = json!({"type": "object", "required": ["amount", "currency", "purpose"],
        "properties": {"amount": {"type": "number"}, "currency": {"type": "string"},
                       "purpose": {"type": "string"}}});
    let v = answer_json(
        &schema,
        "Department: sales\nExpense: Hotel in Berlin for two nights, 780 EUR, customer visit",
    );
    assert_eq!(
        v,
        json!({"amount": 780, "currency": "EUR",
               "purpose": "hotel in Berlin for two nights, customer visit"})
    );
}

#[test]
fn judged_enums_read_opinion_and_spam() {
    let schema = json!({"type": "object", "required": ["verdict", "sentiment"], "properties": {
        "verdict": {"type": "string", "enum": ["publish", "reject"]},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]}}});
    let v = |t: &str| answer_json(&schema, t);
    assert_eq!(
        v("Review 1 of 3:\nGreat blender, smooth soups!"),
        json!({"verdict": "publish", "sentiment": "positive"})
    );
    assert_eq!(
        v("Broke after two days, total junk."),
        json!({"verdict": "publish", "sentiment": "negative"})
    );
    assert_eq!(v("Not bad at all")["sentiment"], "positive");
    assert_eq!(
        v("Buy cheap watches at spam-site dot com"),
        json!({"verdict": "reject", "sentiment": "neutral"})
    );
    assert_eq!(v("see https://x.example/deal")["verdict"], "reject");
}

/// An assistant turn that called `name`, and its result.
fn called(name: &str, result: &str) -> [ChatMessage; 2] {
    let mut asked = ChatMessage::assistant("");
    let id = format!("call_{name}");
    asked.tool_calls.push(ToolCall {
        id: id.clone(),
        name: name.into(),
        arguments: "{}".into(),
    });
    [asked, ChatMessage::tool_result(&id, result)]
}

#[test]
fn tools_chain_in_the_order_the_system_prompt_names_them() {
    let tool = |name: &str, desc: &str, params: Value| ToolDef {
        name: name.into(),
        description: desc.into(),
        parameters: params,
    };
    let key = json!({"type": "object", "properties": {"key": {"type": "string"}}});
    let refund = json!({"type": "object", "properties": {
        "invoice": {"type": "string"}, "amount": {"type": "number"}}});
    let tools = vec![
        tool("issue_refund", "Refund an invoice.", refund),
        tool("find_invoice", "Look up an invoice by its number.", key),
    ];
    let system = "Look invoices up with find_invoice first. Refund with issue_refund.";
    let mut req = with_system(
        system,
        "I was charged twice for invoice INV-1002, please refund it",
    );
    req.tools = tools.clone();
    let first = BuiltinModel::new(0).answer(&req);
    assert!(
        matches!(&first[0], LlmDelta::ToolCallStart { name, .. } if name == "find_invoice"),
        "{first:?}"
    );
    let result =
        r#"{"key":"INV-1002","found":true,"value":{"amount":120.0,"status":"paid twice"}}"#;
    req.messages.extend(called("find_invoice", result));
    let second = BuiltinModel::new(0).answer(&req);
    assert!(
        matches!(&second[0], LlmDelta::ToolCallStart { name, .. } if name == "issue_refund"),
        "{second:?}"
    );
    let args: String = second
        .iter()
        .filter_map(|d| match d {
            LlmDelta::ToolCallArgs { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    let args: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(args, json!({"invoice": "INV-1002", "amount": 120}));
    req.messages
        .extend(called("issue_refund", &args.to_string()));
    let done = text_of(&BuiltinModel::new(0).answer(&req));
    assert_eq!(
        done,
        "Here is what I found. Find invoice: INV-1002: amount 120.0, status paid twice. \
         Issue refund: invoice INV-1002, amount 120."
    );
    // A question about a paid invoice looks it up and does not refund it.
    let mut paid = with_system(system, "Was invoice INV-1001 paid?");
    paid.tools = tools;
    paid.messages.extend(called(
        "find_invoice",
        r#"{"key":"INV-1001","found":false,"value":null}"#,
    ));
    let text = text_of(&BuiltinModel::new(0).answer(&paid));
    assert_eq!(
        text,
        "Here is what I found. Find invoice: nothing was found for INV-1001."
    );
}
