//! The example assistants of `assistants/`, end to end.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

fn catalog() -> Catalog {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants");
    Catalog::load_dir(&dir, &LoadOptions::default()).unwrap_or_else(|e| {
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        panic!(
            "the example assistants do not validate:\n{}",
            lines.join("\n")
        )
    })
}

fn get(id: &str) -> Arc<Assistant> {
    catalog()
        .get(id)
        .unwrap_or_else(|| panic!("no assistant '{id}'"))
}

#[test]
fn they_all_validate_and_together_use_every_node_type() {
    let cat = catalog();
    let ids: Vec<&str> = cat.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "batch_review",
            "expense_claim",
            "onboarding",
            "support_desk",
            "translator"
        ]
    );
    let automated: Vec<&str> = cat
        .iter()
        .filter(|a| a.automated)
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(automated, ["batch_review", "translator"]);
    let pauses = |id: &str| cat.get(id).unwrap().pause_points.clone();
    assert_eq!(
        pauses("expense_claim"),
        [
            "node 'approval' (conversation_action)",
            "node 'fill' (page_action)"
        ]
    );
    assert_eq!(
        pauses("support_desk"),
        ["tool 'issue_refund' used by node 'billing' (confirm: true)"]
    );
    assert_eq!(
        pauses("onboarding"),
        [
            "tool 'open_screen' used by node 'guide' (page tool)",
            "tool 'highlight' used by node 'guide' (page tool)"
        ]
    );
    let used: BTreeSet<&str> = cat
        .iter()
        .flat_map(|a| a.nodes.iter().map(|n| n.kind.type_name()))
        .collect();
    let all: BTreeSet<&str> = NodeKind::TYPES.iter().copied().collect();
    assert_eq!(used, all);
    // Only tools that work offline.
    for a in cat.iter() {
        for (name, t) in &a.tools {
            assert!(
                matches!(t.kind, ToolKind::Builtin { .. } | ToolKind::Page { .. }),
                "{}: tool {name}",
                a.id
            );
        }
        assert!(
            a.welcome_message.is_some() && !a.prologues.is_empty(),
            "{}",
            a.id
        );
        assert!(!a.description.is_empty());
    }
}

#[tokio::test]
async fn translator_end_to_end() {
    let a = get("translator");
    let h = harness();
    h.text("Notre bureau sera fermé vendredi pour le séminaire de l'entreprise.");
    h.text(r#"{"summary": "Le bureau ferme vendredi.", "keywords": ["bureau", "vendredi"]}"#);
    let mut cp = Checkpoint::default();
    let r = h
        .send_args(
            &a,
            &mut cp,
            "Our office will be closed on Friday for the company summit.",
            json!({"style": "formal"}),
        )
        .await;
    assert_eq!(
        r.result(),
        json!({
            "translation": "Notre bureau sera fermé vendredi pour le séminaire de l'entreprise.",
            "summary": "Le bureau ferme vendredi.",
            "keywords": ["bureau", "vendredi"],
            "language": "French"
        })
    );
    let prompt = &h.llm.request(0).messages[1].content;
    assert!(
        prompt.starts_with("Translate into French, in a formal style:"),
        "{prompt}"
    );
    assert!(h.llm.request(1).messages[1]
        .content
        .contains("Notre bureau sera fermé"));
    // With the model's default answers (schema samples), outputs still fit outputArgs.
    let h = harness();
    let r = h
        .send_args(&a, &mut cp, "Hello", json!({"targetLanguage": "German"}))
        .await;
    assert_eq!(r.result()["language"], "German");
    assert!(a
        .check_args(Some(&json!({"targetLanguage": "Klingon"})))
        .is_err());
}

#[tokio::test]
async fn batch_review_end_to_end() {
    let a = get("batch_review");
    let h = harness();
    h.text(r#"{"verdict": "publish", "reason": "honest praise", "sentiment": "positive"}"#);
    h.text(r#"{"verdict": "publish", "reason": "honest complaint", "sentiment": "negative"}"#);
    h.text(r#"{"verdict": "reject", "reason": "spam link", "sentiment": "neutral"}"#);
    let mut cp = Checkpoint::default();
    let r = h
        .send_args(
            &a,
            &mut cp,
            "Great blender!\n\n  Broke after two days.  \nBuy watches at spam dot com\n",
            json!({"product": "the X200 blender"}),
        )
        .await;
    assert_eq!(
        r.result(),
        json!({"count": 3, "reviewedAt": "2024-05-01T09:30:00Z"})
    );
    let m = messages(r.events());
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(
        m[0],
        "1/3 PUBLISH (positive): \"Great blender!\" — honest praise"
    );
    assert_eq!(
        m[1],
        "2/3 PUBLISH (negative): \"Broke after two days.\" — honest complaint"
    );
    assert!(m[2].starts_with("3/3 REJECT (neutral)"));
    assert_eq!(
        m[3],
        "Moderated 3 reviews of the X200 blender at 2024-05-01T09:30:00Z."
    );
    assert_eq!(count(r.events(), "CUSTOM"), 3);
    assert_eq!(h.llm.count(), 3);
    assert!(h.llm.request(0).messages[0]
        .content
        .contains("the X200 blender"));
    assert_eq!(
        h.llm.request(2).messages[1].content,
        "Review 3 of 3:\nBuy watches at spam dot com"
    );
    // The `reviews` arg wins over the message; an empty batch is reported as such.
    let h = harness();
    let r = h
        .send_args(&a, &mut cp, "ignored", json!({"reviews": ["Nice."]}))
        .await;
    assert_eq!(r.result()["count"], 1);
    let h = harness();
    let r = h.send(&a, &mut cp, "  \n ").await;
    assert_eq!(r.result()["count"], 0);
    assert_eq!(
        messages(r.events()),
        ["There was nothing to moderate: send reviews one per line."]
    );
    assert_eq!(h.llm.count(), 0);
}

const TAXI: &str = r#"{"amount": 42, "currency": "EUR", "purpose": "taxi to the airport"}"#;
const HOTEL: &str = r#"{"amount": 780, "currency": "EUR", "purpose": "hotel in Berlin"}"#;

#[tokio::test]
async fn expense_claim_under_the_limit_goes_to_the_form() {
    let a = get("expense_claim");
    let h = harness();
    h.text(TAXI);
    let mut cp = Checkpoint::default();
    let args = json!({"department": "sales", "employee": "Ann Lee"});
    let r = h
        .send_args(&a, &mut cp, "I took a taxi to the airport for 42 EUR", args)
        .await;
    let i = r.interrupt();
    assert_eq!(i.reason, InterruptReason::PageAction);
    assert_eq!(i.action.as_deref(), Some("fill_claim_form"));
    assert_eq!(i.message, "Check the form and press Submit.");
    assert_eq!(
        i.params,
        Some(
            json!({"employee": "Ann Lee", "department": "sales", "amount": 42,
                    "currency": "EUR", "purpose": "taxi to the airport"})
        )
    );
    assert!(i.expires_at.is_some());
    assert_eq!(
        steps(r.events()),
        ["start", "extract", "check", "claim", "fill"]
    );
    let stored = serde_json::to_string(&cp).unwrap();
    let mut cp: Checkpoint = serde_json::from_str(&stored).unwrap();
    let r = h
        .answer(
            &a,
            &mut cp,
            None,
            json!({"submitted": true, "reference": "EC-1042"}),
        )
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"summary": "taxi to the airport: 42 EUR (sales)", "amount": 42,
               "currency": "EUR", "status": "submitted"})
    );
    assert_eq!(
        text(r.events()),
        "Done: your claim of 42 EUR for taxi to the airport was submitted (reference EC-1042)."
    );
    let card = r
        .events()
        .iter()
        .find_map(|e| match e {
            Event::Custom { value, .. } => Some(value.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(card["form"]["reference"], "EC-1042");
    assert_eq!(h.llm.count(), 1);
}

#[tokio::test]
async fn expense_claim_over_the_limit_needs_approval() {
    let a = get("expense_claim");
    let h = harness();
    h.text(HOTEL);
    let mut cp = Checkpoint::default();
    let args = json!({"department": "r&d"});
    let i = h
        .send_args(&a, &mut cp, "Hotel in Berlin, 780 EUR", args.clone())
        .await
        .interrupt();
    assert_eq!(i.reason, InterruptReason::ConversationAction);
    assert!(i.editable);
    assert_eq!(
        i.payload,
        json!({"amount": 780, "currency": "EUR", "purpose": "hotel in Berlin", "department": "r&d"})
    );
    assert!(i.message.contains("r&d limit of 500"), "{}", i.message);
    // A typed message at the card: a reminder, then the card again.
    let r = h
        .answer(&a, &mut cp, Some("reply"), json!("is it really needed?"))
        .await
        .unwrap();
    assert!(text(r.events()).contains("Please use the buttons"));
    let again = r.interrupt();
    assert_eq!(again.node_id, "approval");
    assert_ne!(again.id, i.id);
    // Approve with an edited amount: the form gets the edited data.
    let edited = json!({"amount": 700, "currency": "EUR", "purpose": "hotel in Berlin (2 nights)",
                        "department": "r&d"});
    let i = h
        .answer(&a, &mut cp, Some("approve"), edited)
        .await
        .unwrap()
        .interrupt();
    assert_eq!(i.params.as_ref().unwrap()["amount"], 700);
    assert_eq!(i.params.as_ref().unwrap()["employee"], "");
    // Nobody submits the form in time.
    let r = h.timeout_id(&a, &mut cp, &i.id).await.unwrap();
    assert_eq!(r.result()["status"], "not_submitted");
    assert!(text(r.events()).contains("not submitted within 10 minutes"));
    // Rejected.
    h.text(HOTEL);
    h.send_args(&a, &mut cp, "Hotel again", args)
        .await
        .interrupt();
    let r = h
        .answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"summary": "Claim for hotel in Berlin not filed", "amount": 780,
               "currency": "EUR", "status": "rejected"})
    );
}

#[tokio::test]
async fn support_desk_billing_refund_needs_approval() {
    let a = get("support_desk");
    let h = harness();
    h.text(r#"{"choice": "billing"}"#);
    h.llm.call("find_invoice", json!({"key": "INV-1002"}));
    h.llm.call(
        "issue_refund",
        json!({"invoice": "INV-1002", "amount": 120.0, "reason": "charged twice"}),
    );
    h.text("I refunded 120 EUR for INV-1002.");
    let mut cp = Checkpoint::default();
    let r = h
        .send(&a, &mut cp, "I was charged twice for invoice INV-1002")
        .await;
    let i = r.interrupt();
    assert_eq!(i.reason, InterruptReason::ToolConfirmation);
    assert_eq!(i.payload["tool"], "issue_refund");
    assert_eq!(h.tools.names(), ["find_invoice"]);
    let result = r
        .events()
        .iter()
        .find_map(|e| match e {
            Event::ToolCallResult { content, .. } => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert!(result.contains("paid twice"), "{result}");
    let system = &h.llm.request(0).messages[0].content;
    assert!(system.contains("billing: Billing questions"));
    assert!(system.contains("technical: Technical problems"));
    let r = h
        .answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"answer": "I refunded 120 EUR for INV-1002.", "team": "billing"})
    );
    assert_eq!(h.tools.names(), ["find_invoice", "issue_refund"]);
}

#[tokio::test]
async fn support_desk_technical() {
    let a = get("support_desk");
    let h = harness();
    h.text(r#"{"choice": "technical"}"#);
    h.llm.call("known_issues", json!({"key": "login"}));
    h.text("Sign out, clear the saved password and sign in again.");
    let r = h
        .send(&a, &mut Checkpoint::default(), "I cannot log in")
        .await;
    assert_eq!(
        r.result(),
        json!({"answer": "Sign out, clear the saved password and sign in again.",
               "team": "technical"})
    );
    // A key outside the tool's enum goes back to the model, not to the tool.
    let h = harness();
    h.text(r#"{"choice": "technical"}"#);
    h.llm.call("known_issues", json!({"key": "printer"}));
    h.text("Which device do you use?");
    h.send(&a, &mut Checkpoint::default(), "printing fails")
        .await
        .result();
    assert_eq!(h.tools.count(), 0);
}

#[tokio::test]
async fn onboarding_drives_the_page() {
    let a = get("onboarding");
    let h = harness();
    h.llm.call("help_article", json!({"key": "invoice"}));
    h.llm.call("open_screen", json!({"screen": "new_invoice"}));
    h.llm
        .call("highlight", json!({"element": "#send", "hint": "Send it"}));
    h.text("Fill in the lines and press Send.");
    let mut cp = Checkpoint::default();
    let i = h
        .send(&a, &mut cp, "How do I create my first invoice?")
        .await
        .interrupt();
    assert_eq!(i.action.as_deref(), Some("navigate"));
    assert_eq!(i.params, Some(json!({"screen": "new_invoice"})));
    let i = h
        .answer(&a, &mut cp, None, json!({"opened": "new_invoice"}))
        .await
        .unwrap()
        .interrupt();
    assert_eq!(i.action.as_deref(), Some("highlight_element"));
    let r = h
        .answer(&a, &mut cp, None, json!("highlighted"))
        .await
        .unwrap();
    r.result();
    assert_eq!(
        cp.state["guide"]["text"],
        "Fill in the lines and press Send."
    );
    assert_eq!(h.tools.names(), ["help_article"]);
    let system = &h.llm.request(0).messages[0].content;
    assert!(system.contains("(plan: free)"));
}
