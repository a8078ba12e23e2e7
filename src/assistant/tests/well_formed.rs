//! Well-formed definitions compile, with what they say.

use super::*;

#[test]
fn a_minimal_definition_compiles_with_defaults() {
    let a = ok(minimal());
    assert_eq!(a.id, "bad");
    assert_eq!(a.title, "bad");
    assert_eq!(a.llm, "default");
    assert_eq!(a.max_steps, 1000);
    assert_eq!(a.session_timeout, Duration::from_secs(3600));
    assert!(a.automated);
    assert!(a.pause_points.is_empty());
    assert_eq!(a.start_node().id, "start");
    assert_eq!(
        a.next_edge("start", None).map(|e| e.to.as_str()),
        Some("end")
    );
    assert!(a.next_edge("end", None).is_none());
    let mut d = minimal();
    d["id"] = json!("claims-2");
    d["title"] = json!("Claims");
    d["maxSteps"] = json!(20);
    d["sessionTimeout"] = json!(60);
    d["onBusy"] = json!("enqueue");
    let a = ok(d);
    assert_eq!(
        (a.id.as_str(), a.title.as_str(), a.max_steps),
        ("claims-2", "Claims", 20)
    );
    assert_eq!(a.on_busy, OnBusy::Enqueue);
}

#[test]
fn every_tool_kind_is_read() {
    let mut d = minimal();
    d["tools"] = json!({
        "weather": {"kind": "http", "url": "https://example.test/{{ args.city }}", "method": "post",
                    "headers": {"X-Key": "{{ args.key }}"}, "body": {"q": "{{ args.city }}"}, "timeoutSeconds": 5},
        "show": {"kind": "page", "action": "show_invoice", "description": "Show it"},
        "calc": {"kind": "builtin", "function": "calculator", "confirm": true,
                 "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}
    });
    let a = ok(d);
    match &a.tools["weather"].kind {
        ToolKind::Http(h) => {
            assert_eq!(h.method, "post");
            assert_eq!(h.timeout_seconds, Some(5));
            assert_eq!(h.headers["X-Key"], "{{ args.key }}");
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(
        a.tools["show"].kind,
        ToolKind::Page {
            action: Some("show_invoice".into())
        }
    );
    assert!(a.tools["calc"].confirm);
    // The written form reads back the same.
    for t in a.tools.values() {
        let back: ToolSpec = serde_json::from_value(serde_json::to_value(t).unwrap()).unwrap();
        assert_eq!(&back, t);
    }
    // Unused pausing tools do not make an assistant interactive.
    assert!(a.automated);
    // Config tools are there too; the assistant's own win.
    let mut o = opts();
    o.tools.insert(
        "calc".into(),
        serde_json::from_value(json!({"kind": "builtin", "function": "echo"})).unwrap(),
    );
    o.tools.insert(
        "clock".into(),
        serde_json::from_value(json!({"kind": "builtin", "function": "clock"})).unwrap(),
    );
    let mut d = minimal();
    d["tools"] = json!({"calc": {"kind": "builtin", "function": "calculator"}});
    let a = compile("x.json", "x", &d.to_string(), &o).unwrap();
    assert!(
        matches!(&a.tools["calc"].kind, ToolKind::Builtin { function, .. } if function == "calculator")
    );
    assert!(a.tools.contains_key("clock"));
}
