//! Checking a definition file and compiling it into an [`Assistant`].
//!
//! The checks, in order: JSON syntax; top-level fields; args; each node (known type, known
//! fields, well-formed settings, templates that compile, tools that exist); edges (existing
//! nodes, valid ports, no two ways out by one port); exactly one `start`; every node reachable
//! from `start`. Problems are collected, not returned at the first one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde_json::{Map, Value};

use super::model::*;
use super::{Assistant, DefinitionError, LoadOptions};
use crate::schema;
use crate::template::Templates;

struct Checker<'a> {
    file: &'a str,
    errors: Vec<DefinitionError>,
    /// What node templates may look up: the node ids and `input` (set once nodes are read).
    roots: HashSet<String>,
    /// The start node's id and the input arg names, for hints (`start.department`).
    start_id: String,
    arg_names: Vec<String>,
}

impl Checker<'_> {
    fn err(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            file: self.file.to_string(),
            location: location.into(),
            message: message.into(),
        });
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compile one definition. `file` names it in errors; `stem` is the default id.
pub fn compile(
    file: &str,
    stem: &str,
    text: &str,
    opts: &LoadOptions,
) -> Result<Assistant, Vec<DefinitionError>> {
    let mut c = Checker {
        file,
        errors: Vec::new(),
        roots: HashSet::new(),
        start_id: "start".into(),
        arg_names: Vec::new(),
    };
    let raw: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            c.err("", format!("not valid JSON: {e}"));
            return Err(c.errors);
        }
    };
    let Value::Object(mut top) = raw else {
        c.err("", "an assistant definition must be a JSON object");
        return Err(c.errors);
    };
    // Tools, args and edges are read one by one so that each problem names its place and
    // every one of them is reported, not just the first.
    let tools_raw = top.remove("tools");
    let input_raw = top.remove("inputArgs");
    let output_raw = top.remove("outputArgs");
    let edges_raw = top.remove("edges");
    let mut def: Definition = match serde_json::from_value(Value::Object(top)) {
        Ok(d) => d,
        Err(e) => {
            c.err("", format!("{e}"));
            Definition {
                id: None,
                title: None,
                description: None,
                llm: None,
                welcome_message: None,
                prologues: Vec::new(),
                session_timeout: None,
                input_args: Vec::new(),
                output_args: Vec::new(),
                on_busy: OnBusy::default(),
                max_steps: None,
                tools: BTreeMap::new(),
                nodes: Vec::new(),
                edges: Vec::new(),
            }
        }
    };
    let top_ok = c.errors.is_empty();
    match tools_raw {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (name, v) in m {
                match serde_json::from_value::<ToolSpec>(v) {
                    Ok(t) => {
                        def.tools.insert(name, t);
                    }
                    Err(e) => c.err(format!("tool '{name}'"), e.to_string()),
                }
            }
        }
        Some(_) => c.err("tools", "must be an object of name → tool"),
    }
    def.input_args = read_list(&mut c, "inputArgs", input_raw, |i, _| {
        format!("inputArgs[{i}]")
    });
    def.output_args = read_list(&mut c, "outputArgs", output_raw, |i, _| {
        format!("outputArgs[{i}]")
    });
    // Edges that cannot be read still count for reachability (their problem is reported once).
    let mut loose_edges: Vec<(String, String)> = Vec::new();
    def.edges = read_list(&mut c, "edges", edges_raw, |i, v| {
        let end = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        if let (Some(f), Some(t)) = (
            v.get("from").and_then(Value::as_str),
            v.get("to").and_then(Value::as_str),
        ) {
            loose_edges.push((f.to_string(), t.to_string()));
        }
        format!("edge #{} ({} → {})", i + 1, end("from"), end("to"))
    });
    if !top_ok {
        // Without the nodes nothing else can be judged.
        return Err(c.errors);
    }

    let id = def.id.clone().unwrap_or_else(|| stem.to_string());
    if id.is_empty()
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        c.err("id", format!("'{id}' must be letters, digits, '_' or '-'"));
    }
    let llm = def.llm.clone().unwrap_or_else(|| "default".to_string());
    if !opts.llms.contains(&llm) {
        c.err(
            "llm",
            format!(
                "no LLM named '{llm}' is configured (known: {})",
                opts.llms.join(", ")
            ),
        );
    }

    if def.max_steps == Some(0) {
        c.err("maxSteps", "maxSteps must be at least 1");
    }

    let mut templates = Templates::new();
    check_args(&mut c, "inputArgs", &def.input_args);
    check_args(&mut c, "outputArgs", &def.output_args);
    for a in &def.input_args {
        if a.name == "userInput" {
            c.err("inputArgs", "'userInput' is reserved for the message text");
        }
    }

    // Tools: the config's, then the assistant's own.
    let mut tools = opts.tools.clone();
    for (name, t) in &def.tools {
        tools.insert(name.clone(), t.clone());
    }
    for (name, t) in &tools {
        let loc = format!("tool '{name}'");
        if let Some(p) = &t.parameters {
            if let Err(e) = schema::check_schema(p) {
                c.err(&loc, format!("parameters: {e}"));
            }
        }
        match &t.kind {
            ToolKind::Http(h) => {
                if !["GET", "POST", "PUT", "PATCH", "DELETE"]
                    .contains(&h.method.to_ascii_uppercase().as_str())
                {
                    c.err(&loc, format!("unknown HTTP method '{}'", h.method));
                }
                if let Err(e) = templates.register(&h.url) {
                    c.err(&loc, format!("url template: {e}"));
                }
                for (k, v) in &h.headers {
                    if let Err(e) = templates.register(v) {
                        c.err(&loc, format!("header '{k}' template: {e}"));
                    }
                }
                if let Some(b) = &h.body {
                    if let Err(e) = templates.register_value(b) {
                        c.err(&loc, format!("body template: {e}"));
                    }
                }
            }
            ToolKind::Builtin { function, .. } => {
                if !crate::tools::builtin::FUNCTIONS.contains(&function.as_str()) {
                    c.err(
                        &loc,
                        format!(
                            "unknown builtin function '{function}' (known: {})",
                            crate::tools::builtin::FUNCTIONS.join(", ")
                        ),
                    );
                }
            }
            ToolKind::Page { .. } => {}
        }
    }

    // Nodes.
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    // Nodes that have an id but could not be read: their problem is already reported, so edges
    // that name them and the start-node count do not report it a second time.
    let mut broken: HashSet<String> = HashSet::new();
    let mut broken_starts = 0usize;
    for (i, raw) in def.nodes.iter().enumerate() {
        match parse_node(&mut c, i, raw) {
            Some(n) => {
                if index.contains_key(&n.id) {
                    c.err(format!("node '{}'", n.id), "duplicate node id");
                    continue;
                }
                index.insert(n.id.clone(), nodes.len());
                nodes.push(n);
            }
            None => {
                if let Some(id) = raw.get("id").and_then(Value::as_str) {
                    broken.insert(id.to_string());
                }
                if raw.get("type").and_then(Value::as_str) == Some("start") {
                    broken_starts += 1;
                }
            }
        }
    }
    let mut used_tools: Vec<(String, String)> = Vec::new(); // (node, tool)
    c.roots = index.keys().chain(broken.iter()).cloned().collect();
    c.roots.insert("input".into());
    if let Some(s) = nodes.iter().find(|n| matches!(n.kind, NodeKind::Start(_))) {
        c.start_id = s.id.clone();
    }
    c.arg_names = def.input_args.iter().map(|a| a.name.clone()).collect();
    c.arg_names.push("userInput".into());
    for n in &nodes {
        check_node(
            &mut c,
            n,
            &mut templates,
            &tools,
            &opts.llms,
            &mut used_tools,
        );
    }

    let starts: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.kind, NodeKind::Start(_)))
        .map(|(i, _)| i)
        .collect();
    match starts.len() + broken_starts {
        1 => {}
        0 => c.err(
            "",
            "there is no start node; exactly one node must have type \"start\"",
        ),
        k => c.err(
            "",
            format!("there are {k} start nodes; exactly one is allowed"),
        ),
    }

    // Edges.
    let mut seen_ports: HashSet<(String, String)> = HashSet::new();
    for (i, e) in def.edges.iter().enumerate() {
        let loc = format!("edge #{} ({} → {})", i + 1, e.from, e.to);
        if broken.contains(&e.from) || broken.contains(&e.to) {
            continue;
        }
        let Some(from) = index.get(&e.from).map(|&k| &nodes[k]) else {
            c.err(&loc, format!("'from' names no node: '{}'", e.from));
            continue;
        };
        let Some(to) = index.get(&e.to).map(|&k| &nodes[k]) else {
            c.err(&loc, format!("'to' names no node: '{}'", e.to));
            continue;
        };
        if matches!(to.kind, NodeKind::Start(_)) {
            c.err(&loc, "no edge may lead into the start node");
        }
        let port = e.port.as_deref();
        let port_ok: Result<(), String> = match &from.kind {
            NodeKind::End(_) => Err("an end node has no outgoing edges".into()),
            NodeKind::Condition(cn) => {
                let mut ports: Vec<&str> = cn.branches.iter().map(|b| b.port.as_str()).collect();
                ports.push("else");
                need_port(port, &ports)
            }
            NodeKind::ConversationAction(ca) => {
                // A `send` while paused here answers with action `reply` (CONTRACT §1), so
                // `reply` is a port of every card, a button or not.
                let mut ports: Vec<&str> = ca.buttons.iter().map(String::as_str).collect();
                if !ports.contains(&"reply") {
                    ports.push("reply");
                }
                need_port(port, &ports)
            }
            NodeKind::Iteration(_) => need_port(port, &["body", "done"]),
            NodeKind::Router(_) => match port {
                None => Ok(()),
                Some(p) if p == e.to => Ok(()),
                Some(p) => Err(format!(
                    "a router's port is the target's id; '{p}' is not '{}'",
                    e.to
                )),
            },
            NodeKind::PageAction(pa) => match port {
                None => Ok(()),
                Some("timeout") if pa.timeout_seconds.is_some() => Ok(()),
                Some("timeout") => {
                    Err("port 'timeout' needs timeoutSeconds on the page_action".into())
                }
                Some(p) => Err(format!(
                    "unknown port '{p}' (a page_action has only 'timeout')"
                )),
            },
            _ => match port {
                None => Ok(()),
                Some(p) => Err(format!(
                    "a {} node has no ports, but the edge names port '{p}'",
                    from.kind.type_name()
                )),
            },
        };
        if let Err(m) = port_ok {
            c.err(&loc, m);
        }
        let effective = match (&from.kind, port) {
            (NodeKind::Router(_), None) => e.to.clone(),
            (_, Some(p)) => p.to_string(),
            (_, None) => String::new(),
        };
        if !seen_ports.insert((e.from.clone(), effective.clone())) {
            let by = if effective.is_empty() {
                "its normal way out".to_string()
            } else {
                format!("port '{effective}'")
            };
            c.err(
                &loc,
                format!(
                    "another edge already leaves '{}' by {by}; parallel branches are not supported",
                    e.from
                ),
            );
        }
        if let Some(m) = &e.arg_mapping {
            for (target, path) in m {
                if !is_ident(target) {
                    c.err(
                        &loc,
                        format!("argMapping target '{target}' must be an identifier"),
                    );
                }
                let head = path.split('.').next().unwrap_or("");
                if !index.contains_key(head) && !broken.contains(head) {
                    c.err(
                        &loc,
                        format!("argMapping '{target}': path '{path}' must start with a node id"),
                    );
                }
            }
        }
    }
    // Routers need successors with descriptions.
    for n in &nodes {
        if let NodeKind::Router(_) = n.kind {
            let targets: Vec<&Edge> = def.edges.iter().filter(|e| e.from == n.id).collect();
            if targets.is_empty() {
                c.err(
                    format!("node '{}'", n.id),
                    "a router needs at least one outgoing edge",
                );
            }
            for e in targets {
                if let Some(t) = index.get(&e.to).map(|&k| &nodes[k]) {
                    if t.description.as_deref().is_none_or(str::is_empty) {
                        c.err(
                            format!("node '{}'", t.id),
                            format!(
                                "router '{}' chooses by description, but this node has none",
                                n.id
                            ),
                        );
                    }
                }
            }
        }
    }

    // Reachability (only judged when the start node itself could be read).
    if let ([s], 0) = (&starts[..], broken_starts) {
        let s = *s;
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([nodes[s].id.clone()]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id.clone()) {
                continue;
            }
            for e in def.edges.iter().filter(|e| e.from == id) {
                queue.push_back(e.to.clone());
            }
            for (_, to) in loose_edges.iter().filter(|(f, _)| *f == id) {
                queue.push_back(to.clone());
            }
        }
        for n in &nodes {
            if !seen.contains(&n.id) {
                c.err(
                    format!("node '{}'", n.id),
                    "unreachable from the start node",
                );
            }
        }
    }

    // End outputs against outputArgs.
    for n in &nodes {
        if let NodeKind::End(end) = &n.kind {
            if !def.output_args.is_empty() {
                for k in end.outputs.keys() {
                    if !def.output_args.iter().any(|a| &a.name == k) {
                        c.err(
                            format!("node '{}'", n.id),
                            format!("output '{k}' is not declared in outputArgs"),
                        );
                    }
                }
                for a in def.output_args.iter().filter(|a| a.required) {
                    if !end.outputs.contains_key(&a.name) {
                        c.err(
                            format!("node '{}'", n.id),
                            format!("required output arg '{}' has no value", a.name),
                        );
                    }
                }
            }
        }
    }

    // Automated or interactive: decided here, once.
    let mut pause_points = Vec::new();
    for n in &nodes {
        match n.kind {
            NodeKind::ConversationAction(_) | NodeKind::PageAction(_) => {
                pause_points.push(format!("node '{}' ({})", n.id, n.kind.type_name()))
            }
            _ => {}
        }
    }
    for (node, tool) in &used_tools {
        if let Some(t) = tools.get(tool) {
            if matches!(t.kind, ToolKind::Page { .. }) {
                pause_points.push(format!("tool '{tool}' used by node '{node}' (page tool)"));
            } else if t.confirm {
                pause_points.push(format!(
                    "tool '{tool}' used by node '{node}' (confirm: true)"
                ));
            }
        }
    }

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Assistant {
        title: def.title.clone().unwrap_or_else(|| id.clone()),
        id,
        description: def.description.clone().unwrap_or_default(),
        llm,
        welcome_message: def.welcome_message.clone(),
        prologues: def.prologues.clone(),
        session_timeout: Duration::from_secs(
            def.session_timeout.unwrap_or(opts.default_session_timeout),
        ),
        input_args: def.input_args.clone(),
        output_args: def.output_args.clone(),
        on_busy: def.on_busy,
        max_steps: def.max_steps.unwrap_or(opts.default_max_steps),
        tools,
        automated: pause_points.is_empty(),
        pause_points,
        templates,
        source: Default::default(),
        start: starts[0],
        index,
        nodes,
        edges: def.edges,
    })
}

/// Read a list item by item; `loc` names an item that cannot be read (and is only called then).
fn read_list<T: serde::de::DeserializeOwned>(
    c: &mut Checker<'_>,
    what: &str,
    raw: Option<Value>,
    mut loc: impl FnMut(usize, &Value) -> String,
) -> Vec<T> {
    match raw {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, v) in items.into_iter().enumerate() {
                match serde_json::from_value::<T>(v.clone()) {
                    Ok(t) => out.push(t),
                    Err(e) => {
                        let l = loc(i, &v);
                        c.err(l, e.to_string());
                    }
                }
            }
            out
        }
        Some(_) => {
            c.err(what, "must be a list");
            Vec::new()
        }
    }
}

fn need_port(port: Option<&str>, ports: &[&str]) -> Result<(), String> {
    match port {
        None => Err(format!(
            "this node leaves by named ports; set 'port' to one of: {}",
            ports.join(", ")
        )),
        Some(p) if ports.contains(&p) => Ok(()),
        Some(p) => Err(format!("unknown port '{p}' (ports: {})", ports.join(", "))),
    }
}

fn check_args(c: &mut Checker<'_>, what: &str, args: &[ArgSpec]) {
    let mut names = HashSet::new();
    for (i, a) in args.iter().enumerate() {
        let loc = format!("{what}[{i}] '{}'", a.name);
        if !is_ident(&a.name) {
            c.err(&loc, "name must be an identifier (letters, digits, '_')");
        }
        if !names.insert(a.name.clone()) {
            c.err(&loc, "duplicate name");
        }
        if let Some(d) = &a.default {
            if !a.ty.accepts(d) {
                c.err(
                    &loc,
                    format!("default {d} is not of type {}", a.ty.as_str()),
                );
            }
        }
        if let Some(choices) = &a.choices {
            if choices.is_empty() {
                c.err(&loc, "enum must not be empty");
            }
            for v in choices {
                if !a.ty.accepts(v) {
                    c.err(
                        &loc,
                        format!("enum value {v} is not of type {}", a.ty.as_str()),
                    );
                }
            }
            if let Some(d) = &a.default {
                if !choices.contains(d) {
                    c.err(&loc, format!("default {d} is not one of the enum values"));
                }
            }
        }
    }
}

/// Turn one raw node object into a typed node, reporting what is wrong with it.
fn parse_node(c: &mut Checker<'_>, i: usize, raw: &Value) -> Option<Node> {
    let Some(obj) = raw.as_object() else {
        c.err(format!("nodes[{i}]"), "a node must be a JSON object");
        return None;
    };
    let Some(id) = obj.get("id").and_then(Value::as_str) else {
        c.err(format!("nodes[{i}]"), "a node needs a string 'id'");
        return None;
    };
    let loc = format!("node '{id}'");
    if !is_ident(id) {
        c.err(&loc, "id must be an identifier (letters, digits, '_'; not starting with a digit) so templates can use it");
    }
    if ["input", "loop", "history"].contains(&id) {
        c.err(&loc, format!("'{id}' is a reserved name in templates"));
    }
    let Some(ty) = obj.get("type").and_then(Value::as_str) else {
        c.err(&loc, "a node needs a string 'type'");
        return None;
    };
    let mut rest: Map<String, Value> = obj.clone();
    rest.remove("id");
    rest.remove("type");
    let title = take_str(c, &loc, &mut rest, "title");
    let description = take_str(c, &loc, &mut rest, "description");
    let body = Value::Object(rest);
    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
    let kind = match ty {
        "start" => de(body).map(NodeKind::Start),
        "end" => de(body).map(NodeKind::End),
        "llm" => de(body).map(NodeKind::Llm),
        "agent" => de(body).map(NodeKind::Agent),
        "router" => de(body).map(NodeKind::Router),
        "function" => de(body).map(NodeKind::Function),
        "condition" => de(body).map(NodeKind::Condition),
        "iteration" => de(body).map(NodeKind::Iteration),
        "reply" => de(body).map(NodeKind::Reply),
        "conversation_action" => de(body).map(NodeKind::ConversationAction),
        "page_action" => de(body).map(NodeKind::PageAction),
        other => Err(format!(
            "unknown node type '{other}' (known: {})",
            NodeKind::TYPES.join(", ")
        )),
    };
    match kind {
        Ok(kind) => Some(Node {
            id: id.to_string(),
            title,
            description,
            kind,
        }),
        Err(m) => {
            c.err(&loc, m);
            None
        }
    }
}

fn take_str(
    c: &mut Checker<'_>,
    loc: &str,
    rest: &mut Map<String, Value>,
    key: &str,
) -> Option<String> {
    match rest.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            c.err(loc, format!("'{key}' must be a string"));
            None
        }
    }
}

fn tmpl(c: &mut Checker<'_>, t: &mut Templates, loc: &str, field: &str, src: &str) {
    match t.register(src) {
        Ok(()) => check_names(c, loc, field, t.names(src)),
        Err(e) => c.err(loc, format!("{field}: template does not compile: {e}")),
    }
}

fn tmpl_value(c: &mut Checker<'_>, t: &mut Templates, loc: &str, field: &str, v: &Value) {
    match t.register_value(v) {
        Ok(()) => check_names(c, loc, field, t.names_value(v)),
        Err(e) => c.err(loc, format!("{field}: template does not compile: {e}")),
    }
}

fn expr(c: &mut Checker<'_>, t: &mut Templates, loc: &str, field: &str, src: &str) {
    match t.register_expr(src) {
        Ok(()) => check_names(c, loc, field, t.names_expr(src)),
        Err(e) => c.err(loc, format!("{field}: expression does not compile: {e}")),
    }
}

/// Templates see the state: node ids (and `input`). Any other name is a typo that would
/// silently render as nothing, so it is refused at load.
fn check_names(c: &mut Checker<'_>, loc: &str, field: &str, names: Vec<String>) {
    let mut seen = HashSet::new();
    for name in names {
        if c.roots.contains(&name) || !seen.insert(name.clone()) {
            continue;
        }
        let hint = if c.arg_names.contains(&name) {
            format!("; did you mean '{}.{name}'?", c.start_id)
        } else {
            String::new()
        };
        c.err(
            loc,
            format!(
                "{field}: '{name}' is not a node id (templates read the state: node ids and 'input'){hint}"
            ),
        );
    }
}

fn check_output(c: &mut Checker<'_>, loc: &str, output: OutputMode, schema_v: &Option<Value>) {
    match (output, schema_v) {
        (OutputMode::Json, None) => c.err(loc, "output \"json\" needs a 'schema'"),
        (OutputMode::Json, Some(s)) => {
            if let Err(e) = schema::check_schema(s) {
                c.err(loc, e);
            } else if s.get("type").and_then(Value::as_str) != Some("object") {
                c.err(loc, "a json output schema must have \"type\": \"object\"");
            }
        }
        (OutputMode::Text, Some(_)) => c.err(loc, "'schema' is only used with output \"json\""),
        (OutputMode::Text, None) => {}
    }
}

fn check_llm_name(c: &mut Checker<'_>, loc: &str, llm: &Option<String>, llms: &[String]) {
    if let Some(name) = llm {
        if !llms.contains(name) {
            c.err(
                loc,
                format!(
                    "no LLM named '{name}' is configured (known: {})",
                    llms.join(", ")
                ),
            );
        }
    }
}

fn check_node(
    c: &mut Checker<'_>,
    n: &Node,
    t: &mut Templates,
    tools: &BTreeMap<String, ToolSpec>,
    llms: &[String],
    used: &mut Vec<(String, String)>,
) {
    let loc = format!("node '{}'", n.id);
    match &n.kind {
        NodeKind::Start(_) => {}
        NodeKind::End(e) => {
            for (k, v) in &e.outputs {
                tmpl_value(c, t, &loc, &format!("outputs.{k}"), v);
            }
        }
        NodeKind::Llm(l) => {
            if let Some(s) = &l.system {
                tmpl(c, t, &loc, "system", s);
            }
            tmpl(c, t, &loc, "prompt", &l.prompt);
            check_output(c, &loc, l.output, &l.schema);
            check_llm_name(c, &loc, &l.llm, llms);
        }
        NodeKind::Agent(a) => {
            tmpl(c, t, &loc, "instructions", &a.instructions);
            if let Some(p) = &a.prompt {
                tmpl(c, t, &loc, "prompt", p);
            }
            check_output(c, &loc, a.output, &a.schema);
            check_llm_name(c, &loc, &a.llm, llms);
            if a.max_steps == Some(0) {
                c.err(&loc, "maxSteps must be at least 1");
            }
            for tool in &a.tools {
                if tools.contains_key(tool) {
                    used.push((n.id.clone(), tool.clone()));
                } else {
                    c.err(&loc, format!("unknown tool '{tool}'"));
                }
            }
        }
        NodeKind::Router(r) => {
            if let Some(p) = &r.prompt {
                tmpl(c, t, &loc, "prompt", p);
            }
            if let Some(p) = &r.instructions {
                tmpl(c, t, &loc, "instructions", p);
            }
            check_llm_name(c, &loc, &r.llm, llms);
        }
        NodeKind::Function(f) => {
            if tools.contains_key(&f.tool) {
                used.push((n.id.clone(), f.tool.clone()));
            } else {
                c.err(&loc, format!("unknown tool '{}'", f.tool));
            }
            tmpl_value(c, t, &loc, "args", &f.args);
        }
        NodeKind::Condition(cn) => {
            if cn.branches.is_empty() {
                c.err(&loc, "a condition needs at least one branch");
            }
            let mut ports = HashSet::new();
            for b in &cn.branches {
                if b.port == "else" {
                    c.err(
                        &loc,
                        "'else' is the implicit last port; do not use it as a branch",
                    );
                }
                if !ports.insert(b.port.clone()) {
                    c.err(&loc, format!("duplicate branch port '{}'", b.port));
                }
                expr(
                    c,
                    t,
                    &loc,
                    &format!("branch '{}' when", b.port),
                    strip_braces(&b.when),
                );
            }
        }
        NodeKind::Iteration(it) => expr(c, t, &loc, "over", strip_braces(&it.over)),
        NodeKind::Reply(r) => {
            tmpl(c, t, &loc, "text", &r.text);
            if let Some(d) = &r.data {
                tmpl_value(c, t, &loc, "data", d);
            }
        }
        NodeKind::ConversationAction(ca) => {
            tmpl(c, t, &loc, "message", &ca.message);
            if let Some(d) = &ca.display {
                tmpl_value(c, t, &loc, "display", d);
            }
            if ca.buttons.is_empty() {
                c.err(&loc, "a conversation_action needs at least one button");
            }
            let mut seen = HashSet::new();
            for b in &ca.buttons {
                if b.is_empty() || !seen.insert(b) {
                    c.err(
                        &loc,
                        format!("button names must be unique and non-empty ('{b}')"),
                    );
                }
            }
        }
        NodeKind::PageAction(pa) => {
            if pa.action.is_empty() {
                c.err(&loc, "'action' must not be empty");
            }
            tmpl_value(c, t, &loc, "params", &pa.params);
            if let Some(p) = &pa.prompt {
                tmpl(c, t, &loc, "prompt", p);
            }
            if pa.timeout_seconds == Some(0) {
                c.err(&loc, "timeoutSeconds must be at least 1");
            }
        }
    }
}

/// Conditions may be written bare (`a > 1`) or wrapped (`{{ a > 1 }}`).
pub(crate) fn strip_braces(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(t)
}
