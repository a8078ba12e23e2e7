//! `Catalog`: loading a folder of definitions.

use super::*;

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
