//! Checking a definition file and compiling it into an [`Assistant`].
//!
//! The checks, in order: JSON syntax; top-level fields; args; tools; each node (known type,
//! known fields, well-formed settings, templates that compile, tools that exist: one checker
//! per node kind in `nodes.rs`); exactly one `start`; edges (existing nodes, valid ports, no two
//! ways out by one port), routers' successors, reachability from `start` and `end` outputs
//! against `outputArgs` (`graph.rs`). Problems are collected in a [`Checker`], not returned at
//! the first one; a problem that makes later checks meaningless (not JSON, unreadable top-level
//! fields) stops there. Whether the assistant is automated is decided last, from the nodes and
//! tools that can pause.
//!
//! Layout: `mod.rs` (the order of the checks, top-level fields, args, tools, building the
//! [`Assistant`]), `nodes.rs` (reading nodes, a checker per kind, the ports of each kind),
//! `graph.rs` (edges, routers, reachability, end outputs).

mod graph;
mod nodes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::model::*;
use super::{Assistant, DefinitionError, LoadOptions};
use crate::template::Templates;

/// The problems found so far, and what templates may name.
pub(super) struct Checker<'a> {
    file: &'a str,
    errors: Vec<DefinitionError>,
    /// What node templates may look up: the node ids and `input` (set once nodes are read).
    roots: HashSet<String>,
    /// The start node's id and the input arg names, for hints (`start.department`).
    start_id: String,
    arg_names: Vec<String>,
}

impl Checker<'_> {
    pub(super) fn err(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            file: self.file.to_string(),
            location: location.into(),
            message: message.into(),
        });
    }
}

pub(super) fn is_ident(s: &str) -> bool {
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
    let Some((def, loose_edges)) = read_definition(&mut c, text) else {
        return Err(c.errors);
    };
    let (id, llm) = check_top(&mut c, &def, stem, opts);
    // Compiled once, here: every message's args are checked with it.
    let input_args_schema = JsonSchema::new(super::args_schema(&def.input_args));
    if let Some(e) = input_args_schema.problem() {
        c.err(
            "inputArgs",
            format!("the args do not make a JSON Schema: {e}"),
        );
    }
    let mut templates = Templates::new();
    let tools = check_tools(&mut c, &def, opts, &mut templates);
    let g = graph::Graph::read(&mut c, &def);
    let used_tools = check_nodes(&mut c, &def, &g, &tools, opts, &mut templates);
    let start = g.check(&mut c, &def, &loose_edges);
    let pause_points = pause_points(&g.nodes, &used_tools, &tools);
    if def
        .retention_days
        .is_some_and(|days| !days.is_finite() || days < 0.0)
    {
        c.err(
            "retentionDays",
            "must be a number of days, 0 or more (0 keeps forever)",
        );
    }
    let (Some(start), true) = (start, c.errors.is_empty()) else {
        return Err(c.errors);
    };
    let mut a = Assistant {
        title: def.title.clone().unwrap_or_else(|| id.clone()),
        id,
        description: def.description.clone().unwrap_or_default(),
        llm,
        welcome_message: def.welcome_message.clone(),
        prologues: def.prologues.clone(),
        session_timeout: Duration::from_secs(
            def.session_timeout.unwrap_or(opts.default_session_timeout),
        ),
        retention: def.retention_days.map(retention_from_days),
        input_args: def.input_args.clone(),
        input_args_schema,
        output_args: def.output_args.clone(),
        on_busy: def.on_busy,
        max_steps: def.max_steps.unwrap_or(opts.default_max_steps),
        tools,
        automated: pause_points.is_empty(),
        pause_points,
        templates,
        source: Default::default(),
        start,
        index: g.index,
        nodes: g.nodes,
        edges: def.edges,
        router_schemas: HashMap::new(),
    };
    // Compiled once, here: each run's router checks its model's answer with it.
    a.router_schemas = a
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::Router(_)))
        .map(|n| (n.id.clone(), JsonSchema::new(a.router_choices(&n.id))))
        .collect();
    Ok(a)
}

/// Check every node (the names its templates may use are the graph's nodes, `input`, the args
/// and `userInput`); returns the `(node, tool)` pairs the nodes use.
fn check_nodes(
    c: &mut Checker<'_>,
    def: &Definition,
    g: &graph::Graph,
    tools: &BTreeMap<String, ToolSpec>,
    opts: &LoadOptions,
    templates: &mut Templates,
) -> Vec<(String, String)> {
    let mut used_tools = Vec::new();
    c.roots = g.index.keys().chain(g.broken.iter()).cloned().collect();
    c.roots.insert("input".into());
    if let Some(s) = g
        .nodes
        .iter()
        .find(|n| matches!(n.kind, NodeKind::Start(_)))
    {
        c.start_id = s.id.clone();
    }
    c.arg_names = def.input_args.iter().map(|a| a.name.clone()).collect();
    c.arg_names.push("userInput".into());
    for n in &g.nodes {
        nodes::check_node(c, n, templates, tools, &opts.llms, &mut used_tools);
    }
    used_tools
}

/// Parse the file into a [`Definition`], reading tools, args and edges one by one so that each
/// problem names its place and every one of them is reported. `None` when nothing else can be
/// judged. Also the `(from, to)` of edges that could not be read (they still count for
/// reachability; their problem is reported once).
fn read_definition(c: &mut Checker<'_>, text: &str) -> Option<(Definition, Vec<(String, String)>)> {
    let raw: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            c.err("", format!("not valid JSON: {e}"));
            return None;
        }
    };
    let Value::Object(mut top) = raw else {
        c.err("", "an assistant definition must be a JSON object");
        return None;
    };
    let tools_raw = top.remove("tools");
    let input_raw = top.remove("inputArgs");
    let output_raw = top.remove("outputArgs");
    let edges_raw = top.remove("edges");
    let mut def: Definition = match serde_json::from_value(Value::Object(top)) {
        Ok(d) => d,
        Err(e) => {
            c.err("", format!("{e}"));
            empty_definition()
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
    def.input_args = read_list(c, "inputArgs", input_raw, |i, _| format!("inputArgs[{i}]"));
    def.output_args = read_list(c, "outputArgs", output_raw, |i, _| {
        format!("outputArgs[{i}]")
    });
    let mut loose_edges: Vec<(String, String)> = Vec::new();
    def.edges = read_list(c, "edges", edges_raw, |i, v| {
        let end = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        if let (Some(f), Some(t)) = (
            v.get("from").and_then(Value::as_str),
            v.get("to").and_then(Value::as_str),
        ) {
            loose_edges.push((f.to_string(), t.to_string()));
        }
        format!("edge #{} ({} → {})", i + 1, end("from"), end("to"))
    });
    // Without the nodes nothing else can be judged.
    top_ok.then_some((def, loose_edges))
}

/// `retentionDays` as a duration (zero for 0: keep forever; the caller checked the sign).
fn retention_from_days(days: f64) -> Duration {
    if days > 0.0 {
        Duration::try_from_secs_f64(days * 86_400.0).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// A definition with nothing in it, standing in for one whose top-level fields cannot be read
/// (so that tools, args and edges are still checked).
fn empty_definition() -> Definition {
    Definition {
        id: None,
        title: None,
        description: None,
        llm: None,
        welcome_message: None,
        prologues: Vec::new(),
        session_timeout: None,
        retention_days: None,
        input_args: Vec::new(),
        output_args: Vec::new(),
        on_busy: OnBusy::default(),
        max_steps: None,
        tools: BTreeMap::new(),
        nodes: Vec::new(),
        edges: Vec::new(),
    }
}

/// The id, the default model, `maxSteps` and the args; returns the id and the model's name.
fn check_top(
    c: &mut Checker<'_>,
    def: &Definition,
    stem: &str,
    opts: &LoadOptions,
) -> (String, String) {
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
    check_args(c, "inputArgs", &def.input_args);
    check_args(c, "outputArgs", &def.output_args);
    for a in &def.input_args {
        if a.name == "userInput" {
            c.err("inputArgs", "'userInput' is reserved for the message text");
        }
    }
    (id, llm)
}

/// The tools the assistant can use (the config's, then its own, which win), each checked;
/// their templates are compiled into `templates`.
fn check_tools(
    c: &mut Checker<'_>,
    def: &Definition,
    opts: &LoadOptions,
    templates: &mut Templates,
) -> BTreeMap<String, ToolSpec> {
    let mut tools = opts.tools.clone();
    for (name, t) in &def.tools {
        tools.insert(name.clone(), t.clone());
    }
    for (name, t) in &tools {
        let loc = format!("tool '{name}'");
        if let Some(e) = t.parameters.as_ref().and_then(JsonSchema::problem) {
            c.err(&loc, format!("parameters: {e}"));
        }
        match &t.kind {
            ToolKind::Http(h) => check_http_tool(c, &loc, h, templates),
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
    tools
}

fn check_http_tool(c: &mut Checker<'_>, loc: &str, h: &HttpTool, templates: &mut Templates) {
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&h.method.to_ascii_uppercase().as_str())
    {
        c.err(loc, format!("unknown HTTP method '{}'", h.method));
    }
    if let Err(e) = templates.register(&h.url) {
        c.err(loc, format!("url template: {e}"));
    }
    for (k, v) in &h.headers {
        if let Err(e) = templates.register(v) {
            c.err(loc, format!("header '{k}' template: {e}"));
        }
    }
    if let Some(b) = &h.body {
        if let Err(e) = templates.register_value(b) {
            c.err(loc, format!("body template: {e}"));
        }
    }
}

/// Where the assistant can pause: interactive nodes and the page or confirmed tools its nodes
/// use. None means automated (DESIGN invariant 6).
fn pause_points(
    nodes: &[Node],
    used_tools: &[(String, String)],
    tools: &BTreeMap<String, ToolSpec>,
) -> Vec<String> {
    let mut pause_points = Vec::new();
    for n in nodes {
        match n.kind {
            NodeKind::ConversationAction(_) | NodeKind::PageAction(_) => {
                pause_points.push(format!("node '{}' ({})", n.id, n.kind.type_name()))
            }
            _ => {}
        }
    }
    for (node, tool) in used_tools {
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
    pause_points
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

/// Conditions may be written bare (`a > 1`) or wrapped (`{{ a > 1 }}`).
pub(crate) fn strip_braces(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(t)
}
