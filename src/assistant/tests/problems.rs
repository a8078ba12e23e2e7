//! One test per problem `compile` reports: file, location and message checked; all problems of a file at once.

use super::*;

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
