//! Validation tests: one per problem `compile` reports (file, location and message checked),
//! all problems of a file at once, automated classification, `check_args` and `Catalog`.

use serde_json::{json, Value};

use super::model::ToolKind;
use super::*;
use crate::error::ErrorCode;

fn opts() -> LoadOptions {
    LoadOptions {
        llms: vec!["default".into(), "fast".into()],
        ..LoadOptions::default()
    }
}

fn compile_def(def: &Value) -> Result<Assistant, Vec<DefinitionError>> {
    compile("bad.json", "bad", &def.to_string(), &opts())
}

fn ok(def: Value) -> Assistant {
    compile_def(&def).unwrap_or_else(|e| panic!("should compile: {e:#?}"))
}

fn errs(def: Value) -> Vec<DefinitionError> {
    match compile_def(&def) {
        Ok(_) => panic!("should not compile: {def}"),
        Err(e) => e,
    }
}

/// The only error of a definition; its location and a piece of its message are checked.
#[track_caller]
fn one(def: Value, location: &str, message: &str) -> DefinitionError {
    let e = errs(def);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    let e = e.into_iter().next().unwrap();
    assert_eq!(e.file, "bad.json");
    assert_eq!(e.location, location, "{e:?}");
    assert!(
        e.message.contains(message),
        "'{}' does not contain '{message}'",
        e.message
    );
    e
}

/// start → a → end, with `a` given (leaving by a port its type has).
fn with_node(a: Value) -> Value {
    let mut out = json!({"from": "a", "to": "end"});
    match a["type"].as_str() {
        Some("iteration") => out["port"] = json!("done"),
        Some("conversation_action") => out["port"] = json!("reply"),
        Some("condition") => out["port"] = json!("else"),
        _ => {}
    }
    json!({
        "nodes": [{"id": "start", "type": "start"}, a,
                  {"id": "end", "type": "end", "description": "The end"}],
        "edges": [{"from": "start", "to": "a"}, out]
    })
}

fn minimal() -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "end"}]
    })
}

// ---------------------------------------------------------------------------------------------
// well-formed definitions

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

// ---------------------------------------------------------------------------------------------
// one test per problem

#[test]
fn not_json() {
    let e = compile("bad.json", "bad", "{ nodes: [", &opts()).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].location, "");
    assert!(e[0].message.contains("not valid JSON"), "{}", e[0].message);
    let e = compile("bad.json", "bad", "[1, 2]", &opts()).unwrap_err();
    assert!(e[0].message.contains("must be a JSON object"));
}

#[test]
fn unknown_top_level_field() {
    let mut d = minimal();
    d["welcome"] = json!("hi");
    one(d, "", "unknown field `welcome`");
}

#[test]
fn bad_assistant_id() {
    let mut d = minimal();
    d["id"] = json!("my assistant!");
    one(d, "id", "letters, digits");
}

#[test]
fn no_start_node() {
    one(
        json!({"nodes": [{"id": "end", "type": "end"}], "edges": []}),
        "",
        "there is no start node",
    );
}

#[test]
fn two_start_nodes() {
    let e = errs(json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "start2", "type": "start"}, {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "end"}, {"from": "start2", "to": "end"}]
    }));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].message.contains("there are 2 start nodes"));
}

#[test]
fn unknown_node_type() {
    one(
        with_node(json!({"id": "a", "type": "email"})),
        "node 'a'",
        "unknown node type 'email' (known: start, end, llm",
    );
}

#[test]
fn unknown_field_on_a_node() {
    // Reported once: the edges that name the broken node do not add to it.
    one(
        with_node(json!({"id": "a", "type": "llm", "prompt": "hi", "colour": "red"})),
        "node 'a'",
        "unknown field `colour`",
    );
    one(
        with_node(json!({"id": "a", "type": "reply"})),
        "node 'a'",
        "missing field `text`",
    );
}

#[test]
fn a_broken_start_node_is_reported_once() {
    one(
        json!({"nodes": [{"id": "start", "type": "start", "x": 1}, {"id": "end", "type": "end"}],
               "edges": [{"from": "start", "to": "end"}]}),
        "node 'start'",
        "unknown field `x`",
    );
}

#[test]
fn node_without_id_or_type() {
    let d = json!({"nodes": [{"id": "start", "type": "start"}, {"type": "reply", "text": "x"}, "oops",
                             {"id": "t"}],
                   "edges": []});
    let e = errs(d);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!(e[0].location, "nodes[1]");
    assert!(e[0].message.contains("needs a string 'id'"));
    assert_eq!(e[1].location, "nodes[2]");
    assert!(e[1].message.contains("must be a JSON object"));
    assert_eq!(e[2].location, "node 't'");
    assert!(e[2].message.contains("needs a string 'type'"));
}

#[test]
fn duplicate_node_id() {
    one(
        json!({"nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"},
                         {"id": "end", "type": "reply", "text": "x"}],
               "edges": [{"from": "start", "to": "end"}]}),
        "node 'end'",
        "duplicate node id",
    );
}

#[test]
fn bad_node_ids() {
    one(
        json!({"nodes": [{"id": "start", "type": "start"}, {"id": "the-end", "type": "end"}],
               "edges": [{"from": "start", "to": "the-end"}]}),
        "node 'the-end'",
        "id must be an identifier",
    );
    one(
        json!({"nodes": [{"id": "start", "type": "start"}, {"id": "2nd", "type": "end"}],
               "edges": [{"from": "start", "to": "2nd"}]}),
        "node '2nd'",
        "id must be an identifier",
    );
    one(
        json!({"nodes": [{"id": "start", "type": "start"}, {"id": "input", "type": "end"}],
               "edges": [{"from": "start", "to": "input"}]}),
        "node 'input'",
        "reserved name",
    );
}

#[test]
fn edge_to_or_from_an_unknown_node() {
    let mut d = minimal();
    d["edges"] = json!([{"from": "start", "to": "end"}, {"from": "start", "to": "nowhere"}]);
    // Also two ways out of start by one port: only the unknown target is reported first.
    let e = errs(d);
    assert_eq!(e[0].location, "edge #2 (start → nowhere)");
    assert!(e[0].message.contains("'to' names no node: 'nowhere'"));
    let mut d = minimal();
    d["edges"] = json!([{"from": "start", "to": "end"}, {"from": "ghost", "to": "end"}]);
    one(d, "edge #2 (ghost → end)", "'from' names no node: 'ghost'");
}

#[test]
fn unreadable_edge() {
    let mut d = minimal();
    d["edges"] = json!([{"from": "start", "to": "end", "when": "x"}]);
    // The end is still reachable through the unreadable edge: one error.
    one(d, "edge #1 (start → end)", "unknown field `when`");
}

fn condition_def(port: Option<&str>) -> Value {
    let mut edge = json!({"from": "c", "to": "end"});
    if let Some(p) = port {
        edge["port"] = json!(p);
    }
    json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "c", "type": "condition", "branches": [{"port": "big", "when": "start.n > 1"}]},
                  {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "c"}, edge]
    })
}

#[test]
fn bad_port_of_a_condition() {
    ok(condition_def(Some("big")));
    ok(condition_def(Some("else")));
    one(
        condition_def(Some("small")),
        "edge #2 (c → end)",
        "unknown port 'small' (ports: big, else)",
    );
    one(
        condition_def(None),
        "edge #2 (c → end)",
        "set 'port' to one of: big, else",
    );
}

fn card_def(port: &str) -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "card", "type": "conversation_action", "message": "OK?", "buttons": ["approve", "reject"]},
                  {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "card"}, {"from": "card", "port": port, "to": "end"}]
    })
}

#[test]
fn bad_port_of_a_conversation_action() {
    ok(card_def("approve"));
    // A typed message answers a card with `reply`: always a port.
    ok(card_def("reply"));
    one(
        card_def("maybe"),
        "edge #2 (card → end)",
        "unknown port 'maybe' (ports: approve, reject, reply)",
    );
}

#[test]
fn bad_port_of_an_iteration() {
    let d = |port: &str| {
        json!({
            "nodes": [{"id": "start", "type": "start"},
                      {"id": "each", "type": "iteration", "over": "[1, 2]"},
                      {"id": "end", "type": "end"}],
            "edges": [{"from": "start", "to": "each"}, {"from": "each", "port": port, "to": "end"}]
        })
    };
    ok(d("done"));
    one(
        d("loop"),
        "edge #2 (each → end)",
        "unknown port 'loop' (ports: body, done)",
    );
}

#[test]
fn bad_port_of_a_router() {
    let d = |port: &str| {
        json!({
            "nodes": [{"id": "start", "type": "start"}, {"id": "r", "type": "router"},
                      {"id": "end", "type": "end", "description": "The end"}],
            "edges": [{"from": "start", "to": "r"}, {"from": "r", "port": port, "to": "end"}]
        })
    };
    ok(d("end"));
    one(
        d("finish"),
        "edge #2 (r → end)",
        "a router's port is the target's id; 'finish' is not 'end'",
    );
}

#[test]
fn bad_port_of_a_page_action() {
    let d = |port: &str, timeout: bool| {
        let mut pa = json!({"id": "p", "type": "page_action", "action": "fill"});
        if timeout {
            pa["timeoutSeconds"] = json!(10);
        }
        json!({
            "nodes": [{"id": "start", "type": "start"}, pa, {"id": "end", "type": "end"},
                      {"id": "late", "type": "end"}],
            "edges": [{"from": "start", "to": "p"}, {"from": "p", "to": "end"},
                      {"from": "p", "port": port, "to": "late"}]
        })
    };
    ok(d("timeout", true));
    one(
        d("timeout", false),
        "edge #3 (p → late)",
        "port 'timeout' needs timeoutSeconds",
    );
    one(
        d("cancel", true),
        "edge #3 (p → late)",
        "unknown port 'cancel' (a page_action has only 'timeout')",
    );
}

#[test]
fn port_on_a_node_without_ports() {
    let mut d = with_node(json!({"id": "a", "type": "reply", "text": "x"}));
    d["edges"][1]["port"] = json!("next");
    one(
        d,
        "edge #2 (a → end)",
        "a reply node has no ports, but the edge names port 'next'",
    );
}

#[test]
fn parallel_edges_by_one_port() {
    let d = json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "a", "type": "reply", "text": "a"},
                  {"id": "b", "type": "reply", "text": "b"}],
        "edges": [{"from": "start", "to": "a"}, {"from": "start", "to": "b"}]
    });
    one(
        d,
        "edge #2 (start → b)",
        "another edge already leaves 'start' by its normal way out",
    );
    let mut d = condition_def(Some("big"));
    d["nodes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "other", "type": "end"}));
    d["edges"]
        .as_array_mut()
        .unwrap()
        .push(json!({"from": "c", "port": "big", "to": "other"}));
    one(d, "edge #3 (c → other)", "by port 'big'");
}

#[test]
fn edge_out_of_an_end_node() {
    let d = json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"},
                  {"id": "after", "type": "reply", "text": "x"}],
        "edges": [{"from": "start", "to": "end"}, {"from": "end", "to": "after"}]
    });
    one(
        d,
        "edge #2 (end → after)",
        "an end node has no outgoing edges",
    );
}

#[test]
fn edge_into_the_start_node() {
    let mut d = with_node(json!({"id": "a", "type": "reply", "text": "x"}));
    d["edges"] = json!([{"from": "start", "to": "a"}, {"from": "a", "to": "start"}]);
    d["nodes"].as_array_mut().unwrap().pop();
    one(
        d,
        "edge #2 (a → start)",
        "no edge may lead into the start node",
    );
}

#[test]
fn unreachable_node() {
    let mut d = minimal();
    d["nodes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "orphan", "type": "reply", "text": "x"}));
    one(d, "node 'orphan'", "unreachable from the start node");
}

#[test]
fn template_syntax_errors_name_the_field() {
    one(
        with_node(json!({"id": "a", "type": "llm", "prompt": "Hi {{ start.userInput + }}"})),
        "node 'a'",
        "prompt: template does not compile",
    );
    one(
        with_node(json!({"id": "a", "type": "llm", "system": "{% if %}", "prompt": "x"})),
        "node 'a'",
        "system: template does not compile",
    );
    one(
        with_node(json!({"id": "a", "type": "reply", "text": "ok", "data": {"x": ["{{ ) }}"]}})),
        "node 'a'",
        "data: template does not compile",
    );
    let mut d = minimal();
    d["nodes"][1]["outputs"] = json!({"summary": "{{ start.userInput | }}"});
    one(
        d,
        "node 'end'",
        "outputs.summary: template does not compile",
    );
    one(
        with_node(
            json!({"id": "a", "type": "conversation_action", "message": "{{", "buttons": ["ok"]}),
        ),
        "node 'a'",
        "message: template does not compile",
    );
}

#[test]
fn bad_expression_in_a_condition() {
    let d = json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "c", "type": "condition", "branches": [{"port": "big", "when": "start.n >"}]},
                  {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "c"}, {"from": "c", "port": "big", "to": "end"}]
    });
    one(
        d,
        "node 'c'",
        "branch 'big' when: expression does not compile",
    );
    let d = json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "c", "type": "condition", "branches": []}],
        "edges": [{"from": "start", "to": "c"}]
    });
    one(d, "node 'c'", "needs at least one branch");
    let d = json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "c", "type": "condition", "branches": [{"port": "else", "when": "true"}]}],
        "edges": [{"from": "start", "to": "c"}]
    });
    one(d, "node 'c'", "'else' is the implicit last port");
    one(
        with_node(json!({"id": "a", "type": "iteration", "over": "[1, 2"})),
        "node 'a'",
        "over: expression does not compile",
    );
}

#[test]
fn unknown_tool() {
    one(
        with_node(json!({"id": "a", "type": "function", "tool": "fax"})),
        "node 'a'",
        "unknown tool 'fax'",
    );
    one(
        with_node(json!({"id": "a", "type": "agent", "instructions": "x", "tools": ["fax"]})),
        "node 'a'",
        "unknown tool 'fax'",
    );
}

#[test]
fn bad_tools() {
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "builtin", "function": "teleport"}});
    one(
        d,
        "tool 't'",
        "unknown builtin function 'teleport' (known: echo, calculator, clock, lookup)",
    );
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "ftp"}});
    one(d, "tool 't'", "unknown tool kind 'ftp'");
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "builtin", "function": "echo", "url": "http://x"}});
    one(d, "tool 't'", "a builtin tool has no field 'url'");
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "page", "color": "red"}});
    one(d, "tool 't'", "unknown field `color`");
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "http"}});
    one(d, "tool 't'", "needs a 'url'");
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "http", "url": "http://x/{{ args.q", "method": "BREW"}});
    let e = errs(d);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e.iter().all(|e| e.location == "tool 't'"));
    assert!(e[0].message.contains("unknown HTTP method 'BREW'"));
    assert!(e[1].message.contains("url template"));
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "page", "parameters": {"type": "thing"}}});
    one(d, "tool 't'", "parameters: schema at $ has an unknown type");
}

#[test]
fn router_successor_without_description() {
    let d = json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "r", "type": "router"},
                  {"id": "billing", "type": "reply", "text": "b", "description": "Invoices"},
                  {"id": "tech", "type": "reply", "text": "t"}],
        "edges": [{"from": "start", "to": "r"}, {"from": "r", "to": "billing"}, {"from": "r", "to": "tech"}]
    });
    one(
        d,
        "node 'tech'",
        "router 'r' chooses by description, but this node has none",
    );
    let d = json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "r", "type": "router"}],
        "edges": [{"from": "start", "to": "r"}]
    });
    one(d, "node 'r'", "a router needs at least one outgoing edge");
}

#[test]
fn json_output_needs_an_object_schema() {
    one(
        with_node(json!({"id": "a", "type": "llm", "prompt": "x", "output": "json"})),
        "node 'a'",
        "output \"json\" needs a 'schema'",
    );
    one(
        with_node(
            json!({"id": "a", "type": "llm", "prompt": "x", "output": "json",
                         "schema": {"type": "array"}}),
        ),
        "node 'a'",
        "must have \"type\": \"object\"",
    );
    one(
        with_node(json!({"id": "a", "type": "llm", "prompt": "x", "schema": {"type": "object"}})),
        "node 'a'",
        "'schema' is only used with output \"json\"",
    );
    one(
        with_node(json!({"id": "a", "type": "agent", "instructions": "x", "output": "json"})),
        "node 'a'",
        "needs a 'schema'",
    );
    one(
        with_node(json!({"id": "a", "type": "llm", "prompt": "x", "output": "yaml"})),
        "node 'a'",
        "unknown variant `yaml`",
    );
}

#[test]
fn bad_args() {
    let d = |args: Value| {
        let mut d = minimal();
        d["inputArgs"] = args;
        d
    };
    one(
        d(json!([{"name": "a", "type": "string"}, {"name": "a", "type": "number"}])),
        "inputArgs[1] 'a'",
        "duplicate name",
    );
    one(
        d(json!([{"name": "limit", "type": "number", "default": "500"}])),
        "inputArgs[0] 'limit'",
        "default \"500\" is not of type number",
    );
    one(
        d(json!([{"name": "dept", "type": "string", "enum": ["sales", "r&d"], "default": "hr"}])),
        "inputArgs[0] 'dept'",
        "default \"hr\" is not one of the enum values",
    );
    one(
        d(json!([{"name": "dept", "type": "string", "enum": ["sales", 3]}])),
        "inputArgs[0] 'dept'",
        "enum value 3 is not of type string",
    );
    one(
        d(json!([{"name": "dept", "type": "string", "enum": []}])),
        "inputArgs[0] 'dept'",
        "enum must not be empty",
    );
    one(
        d(json!([{"name": "my arg", "type": "string"}])),
        "inputArgs[0] 'my arg'",
        "name must be an identifier",
    );
    one(
        d(json!([{"name": "userInput", "type": "string"}])),
        "inputArgs",
        "'userInput' is reserved",
    );
    one(
        d(json!([{"name": "x", "type": "date"}])),
        "inputArgs[0]",
        "unknown variant `date`",
    );
    one(
        d(json!([{"name": "x", "type": "string", "hint": "?"}])),
        "inputArgs[0]",
        "unknown field `hint`",
    );
    one(d(json!({"name": "x"})), "inputArgs", "must be a list");
}

#[test]
fn output_args_against_end_outputs() {
    let mut d = minimal();
    d["outputArgs"] = json!([{"name": "summary", "type": "string", "required": true},
                             {"name": "total", "type": "number"}]);
    d["nodes"][1]["outputs"] = json!({"summary": "x", "totl": 3});
    one(
        d,
        "node 'end'",
        "output 'totl' is not declared in outputArgs",
    );
    let mut d = minimal();
    d["outputArgs"] = json!([{"name": "summary", "type": "string", "required": true}]);
    one(
        d,
        "node 'end'",
        "required output arg 'summary' has no value",
    );
    let mut d = minimal();
    d["outputArgs"] = json!([{"name": "n", "type": "integer", "default": 1.5}]);
    one(d, "outputArgs[0] 'n'", "default 1.5 is not of type integer");
}

#[test]
fn unknown_llm_name() {
    let mut d = minimal();
    d["llm"] = json!("gpt-9");
    one(
        d,
        "llm",
        "no LLM named 'gpt-9' is configured (known: default, fast)",
    );
    one(
        with_node(json!({"id": "a", "type": "llm", "prompt": "x", "llm": "slow"})),
        "node 'a'",
        "no LLM named 'slow'",
    );
    ok(with_node(
        json!({"id": "a", "type": "router", "llm": "fast", "description": "x"}),
    ));
}

#[test]
fn numbers_that_must_be_positive() {
    let mut d = minimal();
    d["maxSteps"] = json!(0);
    one(d, "maxSteps", "at least 1");
    one(
        with_node(json!({"id": "a", "type": "agent", "instructions": "x", "maxSteps": 0})),
        "node 'a'",
        "maxSteps must be at least 1",
    );
    one(
        with_node(json!({"id": "a", "type": "page_action", "action": "x", "timeoutSeconds": 0})),
        "node 'a'",
        "timeoutSeconds must be at least 1",
    );
}

#[test]
fn card_buttons() {
    one(
        with_node(json!({"id": "a", "type": "conversation_action", "message": "x", "buttons": []})),
        "node 'a'",
        "needs at least one button",
    );
    one(
        with_node(
            json!({"id": "a", "type": "conversation_action", "message": "x", "buttons": ["ok", "ok"]}),
        ),
        "node 'a'",
        "button names must be unique",
    );
}

#[test]
fn arg_mapping_paths() {
    let mut d = minimal();
    d["edges"][0]["argMapping"] = json!({"who": "start.userInput"});
    ok(d);
    let mut d = minimal();
    d["edges"][0]["argMapping"] = json!({"who": "nobody.name", "bad key": "start.x"});
    let e = errs(d);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e.iter().all(|e| e.location == "edge #1 (start → end)"));
    assert!(e
        .iter()
        .any(|e| e.message.contains("must start with a node id")));
    assert!(e
        .iter()
        .any(|e| e.message.contains("must be an identifier")));
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let d = json!({
        "llm": "nope",
        "inputArgs": [{"name": "limit", "type": "number", "default": "x"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "a", "type": "llm", "prompt": "{{ oops("},
                  {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "a"}, {"from": "a", "to": "end"}]
    });
    let e = errs(d);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e.iter().all(|e| e.file == "bad.json"));
    let locations: Vec<&str> = e.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(locations, ["llm", "inputArgs[0] 'limit'", "node 'a'"]);
    // And the display form names file, place and problem.
    assert!(e[2].to_string().starts_with("bad.json: node 'a': prompt:"));
}

// ---------------------------------------------------------------------------------------------
// automated or interactive

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

// ---------------------------------------------------------------------------------------------
// check_args

fn args_assistant() -> Assistant {
    let mut d = minimal();
    d["inputArgs"] = json!([
        {"name": "department", "type": "string", "required": true, "enum": ["sales", "r&d"], "title": "Department"},
        {"name": "limit", "type": "number", "default": 500},
        {"name": "count", "type": "integer"},
        {"name": "urgent", "type": "boolean", "default": false},
        {"name": "tags", "type": "array"},
        {"name": "meta", "type": "object"}
    ]);
    ok(d)
}

fn details(e: &crate::error::ApiError) -> Vec<(String, String)> {
    e.details
        .as_ref()
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .map(|x| {
                    (
                        x["field"].as_str().unwrap_or("").to_string(),
                        x["message"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn check_args_fills_defaults() {
    let a = args_assistant();
    let out = a
        .check_args(Some(
            &json!({"department": "sales", "count": 3, "tags": ["a"]}),
        ))
        .unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"department": "sales", "limit": 500, "count": 3, "urgent": false, "tags": ["a"]})
    );
    // null counts as absent.
    let out = a
        .check_args(Some(
            &json!({"department": "r&d", "limit": null, "count": 2.0}),
        ))
        .unwrap();
    assert_eq!(out["limit"], 500);
    assert_eq!(out["count"], 2.0);
}

#[test]
fn check_args_names_every_bad_field() {
    let a = args_assistant();
    let e = a
        .check_args(Some(
            &json!({"limit": "high", "department": "hr", "count": 1.5,
                                 "urgent": "yes", "tags": {}, "meta": [], "color": "red"}),
        ))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    let d = details(&e);
    let fields: Vec<&str> = d.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "department",
            "limit",
            "count",
            "urgent",
            "tags",
            "meta",
            "color"
        ]
    );
    assert!(
        d[0].1.contains("must be one of [\"sales\",\"r&d\"]"),
        "{}",
        d[0].1
    );
    assert_eq!(d[1].1, "must be number");
    assert_eq!(d[2].1, "must be integer");
    assert_eq!(d[6].1, "is not an input arg of this assistant");
    for f in fields {
        assert!(e.message.contains(f), "{}", e.message);
    }
    // Missing required.
    let e = a.check_args(None).unwrap_err();
    assert_eq!(
        details(&e),
        [("department".to_string(), "is required".to_string())]
    );
    // Not an object at all.
    let e = a.check_args(Some(&json!([1]))).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    assert_eq!(details(&e)[0].0, "args");
}

#[test]
fn input_schema_describes_the_args() {
    let a = args_assistant();
    let s = a.input_schema();
    assert_eq!(s["required"], json!(["department"]));
    assert_eq!(
        s["properties"]["department"]["enum"],
        json!(["sales", "r&d"])
    );
    assert_eq!(s["properties"]["department"]["title"], "Department");
    assert_eq!(s["properties"]["limit"]["default"], 500);
    assert_eq!(s["additionalProperties"], false);
    assert!(crate::schema::check_schema(&s).is_ok());
    assert!(crate::schema::validate(&s, &json!({"department": "sales"})).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Catalog

#[test]
fn catalog_loads_a_directory_and_reports_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let write =
        |name: &str, v: &Value| std::fs::write(dir.path().join(name), v.to_string()).unwrap();
    write("alpha.json", &minimal());
    let mut b = minimal();
    b["id"] = json!("beta");
    write("b.json", &b);
    std::fs::write(dir.path().join("notes.txt"), "not an assistant").unwrap();
    let cat = Catalog::load_dir(dir.path(), &opts()).unwrap();
    assert_eq!(cat.len(), 2);
    assert!(cat.get("alpha").is_some());
    let beta = cat.get("beta").unwrap();
    assert!(beta.source.ends_with("b.json"));
    assert!(cat.get("b").is_none());

    // Two broken files and an id clash: every problem, each naming its file.
    let mut clash = minimal();
    clash["id"] = json!("alpha");
    write("c.json", &clash);
    write("d.json", &json!({"nodes": []}));
    std::fs::write(dir.path().join("e.json"), "{").unwrap();
    let e = Catalog::load_dir(dir.path(), &opts()).unwrap_err();
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].file.ends_with("c.json") && e[0].message.contains("already used"));
    assert!(e[1].file.ends_with("d.json") && e[1].message.contains("no start node"));
    assert!(e[2].file.ends_with("e.json") && e[2].message.contains("not valid JSON"));

    let e = Catalog::load_dir(&dir.path().join("missing"), &opts()).unwrap_err();
    assert!(e[0]
        .message
        .contains("cannot read the assistants directory"));
}

#[test]
fn templates_may_only_read_node_ids() {
    let mut d =
        with_node(json!({"id": "a", "type": "llm", "prompt": "{{ draf.text }} {{ a.text }}"}));
    d["inputArgs"] = json!([{"name": "department", "type": "string"}]);
    one(d.clone(), "node 'a'", "prompt: 'draf' is not a node id");
    d["nodes"][1]["prompt"] = json!("For {{ department }}: {{ input.x }}");
    one(
        d.clone(),
        "node 'a'",
        "'department' is not a node id (templates read the state: node ids and 'input'); did you mean 'start.department'?",
    );
    d["nodes"][1]["prompt"] =
        json!("{% for l in start.userInput | lines %}{{ loop.index }}{{ l }}{% endfor %}{{ range(2) | list }}");
    ok(d);
    // Conditions, iterations, outputs and card data too.
    let d = json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "c", "type": "condition", "branches": [{"port": "p", "when": "amount > 1"}]},
                  {"id": "each", "type": "iteration", "over": "itemz"},
                  {"id": "end", "type": "end", "outputs": {"x": ["{{ totl }}"]}}],
        "edges": [{"from": "start", "to": "c"}, {"from": "c", "port": "else", "to": "each"},
                  {"from": "each", "port": "done", "to": "end"}]
    });
    let e = errs(d);
    let msgs: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(e.len(), 3, "{msgs:#?}");
    assert!(msgs[0].starts_with("branch 'p' when: 'amount' is not a node id"));
    assert!(msgs[1].starts_with("over: 'itemz' is not a node id"));
    assert!(msgs[2].starts_with("outputs.x: 'totl' is not a node id"));
}

#[test]
fn more_node_and_tool_problems() {
    let mut d = minimal();
    d["tools"] = json!(["echo"]);
    one(d, "tools", "must be an object of name → tool");
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "http", "url": "http://x", "headers": {"A": "{{ args.a"}}});
    one(d, "tool 't'", "header 'A' template");
    let mut d = minimal();
    d["tools"] = json!({"t": {"kind": "http", "url": "http://x", "method": "POST", "body": {"q": ["{% if %}"]}}});
    one(d, "tool 't'", "body template");
    one(
        with_node(json!({"id": "a", "type": "reply", "text": "x", "title": 3})),
        "node 'a'",
        "'title' must be a string",
    );
    let d = json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "c", "type": "condition", "branches": [{"port": "p", "when": "true"}, {"port": "p", "when": "false"}]}],
        "edges": [{"from": "start", "to": "c"}]
    });
    one(d, "node 'c'", "duplicate branch port 'p'");
    one(
        with_node(json!({"id": "a", "type": "page_action", "action": ""})),
        "node 'a'",
        "'action' must not be empty",
    );
    one(
        with_node(
            json!({"id": "a", "type": "page_action", "action": "x", "params": {"v": "{{ 1 + }}"}}),
        ),
        "node 'a'",
        "params: template does not compile",
    );
    one(
        with_node(json!({"id": "a", "type": "page_action", "action": "x", "prompt": "{{ nope }}"})),
        "node 'a'",
        "prompt: 'nope' is not a node id",
    );
    one(
        with_node(
            json!({"id": "a", "type": "conversation_action", "message": "x", "buttons": ["ok"],
                         "display": {"d": "{{ start.userInput | }}"}}),
        ),
        "node 'a'",
        "display: template does not compile",
    );
    // Two problems of one node: both reported.
    let e = errs(with_node(
        json!({"id": "a", "type": "function", "tool": "t", "args": {"x": "{{ 1 + }}"}}),
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(e[0].message, "unknown tool 't'");
    assert!(e[1].message.starts_with("args: template does not compile"));
}

// ---- fuzzing the loader ----------------------------------------------------------------------

mod loader_fuzz {
    use super::*;
    use proptest::prelude::*;

    /// The example assistants, as JSON values to mutate.
    fn examples() -> Vec<Value> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
            }
        }
        out
    }

    fn replacement() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!("")),
            Just(json!("{{ }}")),
            Just(json!("{% for x in %}")),
            Just(json!("{{ start.userInput }}")),
            Just(json!(-1)),
            Just(json!(1e300)),
            Just(json!([])),
            Just(json!({})),
            Just(json!({"type": "start"})),
            Just(json!(true)),
            "[a-z_]{0,8}".prop_map(Value::from),
        ]
    }

    /// Replace (or delete) the `pick`-th node of the JSON tree.
    fn mutate(v: &mut Value, pick: &mut usize, with: &Value, delete: bool) -> bool {
        if *pick == 0 {
            *v = with.clone();
            return true;
        }
        *pick -= 1;
        match v {
            Value::Object(m) => {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    if *pick == 0 && delete {
                        m.remove(&k);
                        return true;
                    }
                    if let Some(child) = m.get_mut(&k) {
                        if mutate(child, pick, with, delete) {
                            return true;
                        }
                    }
                }
                false
            }
            Value::Array(a) => {
                for child in a.iter_mut() {
                    if mutate(child, pick, with, delete) {
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any mutation of a valid definition either compiles or gives errors naming the file;
        /// it never panics.
        #[test]
        fn mutated_definitions_never_panic(
            which in 0usize..5,
            picks in prop::collection::vec((0usize..400, replacement(), any::<bool>()), 1..4),
        ) {
            let ex = examples();
            let mut def = ex[which % ex.len()].clone();
            for (pick, with, delete) in picks {
                let mut p = pick;
                mutate(&mut def, &mut p, &with, delete);
            }
            if let Err(errs) = compile("fuzz.json", "fuzz", &def.to_string(), &opts()) {
                prop_assert!(!errs.is_empty());
                for e in errs {
                    prop_assert_eq!(e.file.as_str(), "fuzz.json");
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = compile("fuzz.json", "fuzz", &s, &opts());
        }
    }
}

#[test]
fn retention_days_are_read_and_checked() {
    assert_eq!(ok(minimal()).retention, None);
    let mut d = minimal();
    d["retentionDays"] = json!(0.5);
    assert_eq!(ok(d).retention, Some(Duration::from_secs(43_200)));
    let mut d = minimal();
    d["retentionDays"] = json!(0);
    assert_eq!(ok(d).retention, Some(Duration::ZERO));
    let mut d = minimal();
    d["retentionDays"] = json!(-1);
    let e = errs(d);
    assert!(e.iter().any(|e| e.location == "retentionDays"), "{e:?}");
}

/// Args checked by the JSON Schema compiled at load: nested problems keep their path after
/// the field, and an assistant with a router holds its compiled choice schema.
#[test]
fn check_args_uses_the_schema_compiled_at_load() {
    let a = args_assistant();
    assert!(a.input_args_schema.problem().is_none());
    assert_eq!(a.input_schema(), a.input_args_schema.source().clone());
    // Null is absent for a known arg, but an unknown arg is refused even when null.
    let e = a
        .check_args(Some(
            &json!({"department": "sales", "limit": null, "color": null}),
        ))
        .unwrap_err();
    assert_eq!(
        details(&e),
        [(
            "color".to_string(),
            "is not an input arg of this assistant".to_string()
        )]
    );
    // Two problems of one field: the type wins (as it did before the schema crate).
    let e = a
        .check_args(Some(&json!({"department": 7, "count": "x"})))
        .unwrap_err();
    assert_eq!(
        details(&e),
        [
            ("department".to_string(), "must be string".to_string()),
            ("count".to_string(), "must be integer".to_string())
        ]
    );
}

/// `cargo test --lib check_args_timing -- --ignored --nocapture`: ns per `check_args` call
/// (debug build).
#[test]
#[ignore]
fn check_args_timing() {
    let a = args_assistant();
    let args = json!({"department": "sales", "count": 3, "tags": ["a"], "meta": {"k": 1}});
    let n = 20_000u32;
    for _ in 0..1000 {
        assert!(a.check_args(Some(&args)).is_ok());
    }
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert!(a.check_args(Some(&args)).is_ok());
    }
    let whole = t.elapsed().as_nanos() / u128::from(n);
    let full = Value::Object(a.check_args(Some(&args)).unwrap());
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert!(a.input_args_schema.is_valid(&full));
    }
    let valid = t.elapsed().as_nanos() / u128::from(n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let m = args.as_object().unwrap().clone();
        assert!(!m.is_empty());
    }
    let clone = t.elapsed().as_nanos() / u128::from(n);
    // The hand-written check this replaced (its happy path), for comparison.
    let old = |given: &serde_json::Map<String, Value>| {
        let mut out = serde_json::Map::new();
        for spec in &a.input_args {
            match given.get(&spec.name) {
                Some(v) if !v.is_null() => {
                    if !spec.ty.accepts(v) || spec.choices.as_ref().is_some_and(|c| !c.contains(v))
                    {
                        return None;
                    }
                    out.insert(spec.name.clone(), v.clone());
                }
                _ => {
                    if let Some(d) = &spec.default {
                        out.insert(spec.name.clone(), d.clone());
                    }
                }
            }
        }
        Some(out)
    };
    let given = args.as_object().unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert!(old(given).is_some());
    }
    let hand = t.elapsed().as_nanos() / u128::from(n);
    println!("check_args: {whole} ns per call, of which the schema's is_valid {valid} ns (a clone of the args: {clone} ns; the hand-written check it replaced: {hand} ns)");
}

/// Schemas are compiled when the definition is read: an invalid output schema is reported
/// with the node (with the node's other problems), a valid one is held compiled, and each
/// router holds its choice schema.
#[test]
fn schemas_are_compiled_at_load() {
    let e = errs(with_node(
        json!({"id": "a", "type": "llm", "prompt": "{{ nope }}", "output": "json",
               "schema": {"type": "obj"}}),
    ));
    assert!(
        e.iter()
            .any(|e| e.location == "node 'a'"
                && e.message == r#"schema at $ has an unknown type "obj""#),
        "{e:#?}"
    );
    assert!(
        e.len() >= 2,
        "the node's other problem is reported too: {e:#?}"
    );
    let a = ok(with_node(
        json!({"id": "a", "type": "llm", "prompt": "x", "output": "json",
               "schema": {"type": "object", "required": ["n"]}}),
    ));
    let Some(NodeKind::Llm(l)) = a.node("a").map(|n| &n.kind) else {
        panic!("an llm node")
    };
    let s = l.schema.as_ref().expect("schema");
    assert!(s.is_valid(&json!({"n": 1})) && !s.is_valid(&json!({})));
    let a = ok(json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "r", "type": "router"},
                  {"id": "billing", "type": "reply", "text": "b", "description": "Invoices"},
                  {"id": "tech", "type": "reply", "text": "t", "description": "Bugs"}],
        "edges": [{"from": "start", "to": "r"}, {"from": "r", "to": "billing"}, {"from": "r", "to": "tech"}]
    }));
    let r = a.router_schema("r").expect("compiled at load");
    assert_eq!(r.source(), &a.router_choices("r"));
    assert!(r.is_valid(&json!({"choice": "tech"})));
    assert!(!r.is_valid(&json!({"choice": "sales"})));
}
