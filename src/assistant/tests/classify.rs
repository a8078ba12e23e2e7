//! Automated or interactive: which assistants can pause.

use super::*;

#[test]
fn automated_classification() {
    let a = ok(with_node(json!({"id": "a", "type": "llm", "prompt": "x"})));
    assert!(a.automated);
    assert_eq!(a.summary()["automated"], true);

    let a = ok(with_node(
        json!({"id": "a", "type": "conversation_action", "message": "x", "buttons": ["ok"]}),
    ));
    assert!(!a.automated);
    assert_eq!(a.pause_points, ["node 'a' (conversation_action)"]);

    let a = ok(with_node(
        json!({"id": "a", "type": "page_action", "action": "fill"}),
    ));
    assert!(!a.automated);
    assert_eq!(a.pause_points, ["node 'a' (page_action)"]);

    let mut d = with_node(
        json!({"id": "a", "type": "agent", "instructions": "x", "tools": ["show", "calc"]}),
    );
    d["tools"] =
        json!({"show": {"kind": "page"}, "calc": {"kind": "builtin", "function": "calculator"}});
    let a = ok(d);
    assert!(!a.automated);
    assert_eq!(a.pause_points, ["tool 'show' used by node 'a' (page tool)"]);

    let mut d = with_node(json!({"id": "a", "type": "function", "tool": "pay"}));
    d["tools"] = json!({"pay": {"kind": "builtin", "function": "echo", "confirm": true}});
    let a = ok(d);
    assert!(!a.automated);
    assert_eq!(
        a.pause_points,
        ["tool 'pay' used by node 'a' (confirm: true)"]
    );
    assert_eq!(a.summary()["automated"], false);
}
