//! Checking nodes: reading each raw node into a typed [`Node`], one checker per node kind
//! (settings, templates that compile and name only state roots, tools and models that exist),
//! and the ports an edge may leave each kind by.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::{is_ident, strip_braces, Checker};
use crate::assistant::model::*;
use crate::template::Templates;

/// What a node checker works with: the errors, the templates being compiled, and what the
/// definition offers (tools, models). `used` collects `(node, tool)` for the automation check.
pub(super) struct NodeCx<'c, 'a> {
    pub(super) c: &'c mut Checker<'a>,
    pub(super) t: &'c mut Templates,
    pub(super) tools: &'c BTreeMap<String, ToolSpec>,
    pub(super) llms: &'c [String],
    pub(super) used: &'c mut Vec<(String, String)>,
    /// `node '<id>'`: where this node's problems are reported.
    loc: String,
    id: String,
}

impl NodeCx<'_, '_> {
    fn err(&mut self, message: impl Into<String>) {
        self.c.err(&self.loc, message);
    }

    /// A text template.
    fn tmpl(&mut self, field: &str, src: &str) {
        match self.t.register(src) {
            Ok(()) => check_names(self.c, &self.loc, field, self.t.names(src)),
            Err(e) => self.err(format!("{field}: template does not compile: {e}")),
        }
    }

    /// A JSON value whose strings are templates.
    fn tmpl_value(&mut self, field: &str, v: &Value) {
        match self.t.register_value(v) {
            Ok(()) => check_names(self.c, &self.loc, field, self.t.names_value(v)),
            Err(e) => self.err(format!("{field}: template does not compile: {e}")),
        }
    }

    /// An expression (condition branches, iteration lists).
    fn expr(&mut self, field: &str, src: &str) {
        match self.t.register_expr(src) {
            Ok(()) => check_names(self.c, &self.loc, field, self.t.names_expr(src)),
            Err(e) => self.err(format!("{field}: expression does not compile: {e}")),
        }
    }

    fn output(&mut self, output: OutputMode, schema_v: &Option<JsonSchema>) {
        match (output, schema_v) {
            (OutputMode::Json, None) => self.err("output \"json\" needs a 'schema'"),
            (OutputMode::Json, Some(s)) => {
                if let Some(e) = s.problem() {
                    self.err(e.to_string());
                } else if s.source().get("type").and_then(Value::as_str) != Some("object") {
                    self.err("a json output schema must have \"type\": \"object\"");
                }
            }
            (OutputMode::Text, Some(_)) => self.err("'schema' is only used with output \"json\""),
            (OutputMode::Text, None) => {}
        }
    }

    fn llm_name(&mut self, llm: &Option<String>) {
        if let Some(name) = llm {
            if !self.llms.contains(name) {
                let known = self.llms.join(", ");
                self.err(format!(
                    "no LLM named '{name}' is configured (known: {known})"
                ));
            }
        }
    }

    fn tool(&mut self, tool: &str) {
        if self.tools.contains_key(tool) {
            self.used.push((self.id.clone(), tool.to_string()));
        } else {
            self.err(format!("unknown tool '{tool}'"));
        }
    }
}

/// Check node `n` with the checker of its kind.
pub(super) fn check_node(
    c: &mut Checker<'_>,
    n: &Node,
    t: &mut Templates,
    tools: &BTreeMap<String, ToolSpec>,
    llms: &[String],
    used: &mut Vec<(String, String)>,
) {
    let mut cx = NodeCx {
        c,
        t,
        tools,
        llms,
        used,
        loc: format!("node '{}'", n.id),
        id: n.id.clone(),
    };
    match &n.kind {
        NodeKind::Start(_) => {}
        NodeKind::End(e) => check_end(&mut cx, e),
        NodeKind::Llm(l) => check_llm(&mut cx, l),
        NodeKind::Agent(a) => check_agent(&mut cx, a),
        NodeKind::Router(r) => check_router(&mut cx, r),
        NodeKind::Function(f) => check_function(&mut cx, f),
        NodeKind::Condition(cn) => check_condition(&mut cx, cn),
        NodeKind::Iteration(it) => cx.expr("over", strip_braces(&it.over)),
        NodeKind::Reply(r) => check_reply(&mut cx, r),
        NodeKind::ConversationAction(ca) => check_conversation_action(&mut cx, ca),
        NodeKind::PageAction(pa) => check_page_action(&mut cx, pa),
    }
}

fn check_end(cx: &mut NodeCx<'_, '_>, e: &EndNode) {
    for (k, v) in &e.outputs {
        cx.tmpl_value(&format!("outputs.{k}"), v);
    }
}

fn check_llm(cx: &mut NodeCx<'_, '_>, l: &LlmNode) {
    if let Some(s) = &l.system {
        cx.tmpl("system", s);
    }
    cx.tmpl("prompt", &l.prompt);
    cx.output(l.output, &l.schema);
    cx.llm_name(&l.llm);
}

fn check_agent(cx: &mut NodeCx<'_, '_>, a: &AgentNode) {
    cx.tmpl("instructions", &a.instructions);
    if let Some(p) = &a.prompt {
        cx.tmpl("prompt", p);
    }
    cx.output(a.output, &a.schema);
    cx.llm_name(&a.llm);
    if a.max_steps == Some(0) {
        cx.err("maxSteps must be at least 1");
    }
    for tool in &a.tools {
        cx.tool(tool);
    }
}

fn check_router(cx: &mut NodeCx<'_, '_>, r: &RouterNode) {
    if let Some(p) = &r.prompt {
        cx.tmpl("prompt", p);
    }
    if let Some(p) = &r.instructions {
        cx.tmpl("instructions", p);
    }
    cx.llm_name(&r.llm);
}

fn check_function(cx: &mut NodeCx<'_, '_>, f: &FunctionNode) {
    cx.tool(&f.tool);
    cx.tmpl_value("args", &f.args);
}

fn check_condition(cx: &mut NodeCx<'_, '_>, cn: &ConditionNode) {
    if cn.branches.is_empty() {
        cx.err("a condition needs at least one branch");
    }
    let mut ports = HashSet::new();
    for b in &cn.branches {
        if b.port == port::ELSE {
            cx.err("'else' is the implicit last port; do not use it as a branch");
        }
        if !ports.insert(b.port.clone()) {
            cx.err(format!("duplicate branch port '{}'", b.port));
        }
        cx.expr(&format!("branch '{}' when", b.port), strip_braces(&b.when));
    }
}

fn check_reply(cx: &mut NodeCx<'_, '_>, r: &ReplyNode) {
    cx.tmpl("text", &r.text);
    if let Some(d) = &r.data {
        cx.tmpl_value("data", d);
    }
}

fn check_conversation_action(cx: &mut NodeCx<'_, '_>, ca: &ConversationActionNode) {
    cx.tmpl("message", &ca.message);
    if let Some(d) = &ca.display {
        cx.tmpl_value("display", d);
    }
    if ca.buttons.is_empty() {
        cx.err("a conversation_action needs at least one button");
    }
    let mut seen = HashSet::new();
    for b in &ca.buttons {
        if b.is_empty() || !seen.insert(b) {
            cx.err(format!("button names must be unique and non-empty ('{b}')"));
        }
    }
}

fn check_page_action(cx: &mut NodeCx<'_, '_>, pa: &PageActionNode) {
    if pa.action.is_empty() {
        cx.err("'action' must not be empty");
    }
    cx.tmpl_value("params", &pa.params);
    if let Some(p) = &pa.prompt {
        cx.tmpl("prompt", p);
    }
    if pa.timeout_seconds == Some(0) {
        cx.err("timeoutSeconds must be at least 1");
    }
}

/// Whether an edge from `from` may leave by `port` (its target is `to`).
pub(super) fn check_port(from: &NodeKind, port: Option<&str>, to: &str) -> Result<(), String> {
    match from {
        NodeKind::End(_) => Err("an end node has no outgoing edges".into()),
        NodeKind::Condition(cn) => {
            let mut ports: Vec<&str> = cn.branches.iter().map(|b| b.port.as_str()).collect();
            ports.push(port::ELSE);
            need_port(port, &ports)
        }
        NodeKind::ConversationAction(ca) => {
            // A `send` while paused here answers with action `reply` (CONTRACT §1), so
            // `reply` is a port of every card, a button or not.
            let mut ports: Vec<&str> = ca.buttons.iter().map(String::as_str).collect();
            if !ports.contains(&port::REPLY) {
                ports.push(port::REPLY);
            }
            need_port(port, &ports)
        }
        NodeKind::Iteration(_) => need_port(port, &[port::BODY, port::DONE]),
        NodeKind::Router(_) => match port {
            None => Ok(()),
            Some(p) if p == to => Ok(()),
            Some(p) => Err(format!(
                "a router's port is the target's id; '{p}' is not '{to}'"
            )),
        },
        NodeKind::PageAction(pa) => match port {
            None => Ok(()),
            Some(port::TIMEOUT) if pa.timeout_seconds.is_some() => Ok(()),
            Some(port::TIMEOUT) => {
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
                from.type_name()
            )),
        },
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

/// Turn one raw node object into a typed node, reporting what is wrong with it.
pub(super) fn parse_node(c: &mut Checker<'_>, i: usize, raw: &Value) -> Option<Node> {
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
    match parse_kind(ty, Value::Object(rest)) {
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

/// A node's settings (`body`: the node without `id`, `type`, `title`, `description`) by type.
fn parse_kind(ty: &str, body: Value) -> Result<NodeKind, String> {
    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
    match ty {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_leaves_by_its_own_ports() {
        let iteration = NodeKind::Iteration(IterationNode { over: "x".into() });
        assert_eq!(check_port(&iteration, Some(port::BODY), "b"), Ok(()));
        assert_eq!(check_port(&iteration, Some(port::DONE), "b"), Ok(()));
        assert_eq!(
            check_port(&iteration, None, "b"),
            Err("this node leaves by named ports; set 'port' to one of: body, done".into())
        );
        let card = NodeKind::ConversationAction(ConversationActionNode {
            message: "m".into(),
            display: None,
            buttons: vec!["ok".into()],
            editable: false,
        });
        // `reply` is a port of every card.
        assert_eq!(check_port(&card, Some(port::REPLY), "b"), Ok(()));
        assert_eq!(
            check_port(&card, Some("no"), "b"),
            Err("unknown port 'no' (ports: ok, reply)".into())
        );
        let page = NodeKind::PageAction(PageActionNode {
            action: "a".into(),
            params: Value::Null,
            prompt: None,
            timeout_seconds: None,
        });
        assert_eq!(
            check_port(&page, Some(port::TIMEOUT), "b"),
            Err("port 'timeout' needs timeoutSeconds on the page_action".into())
        );
        let router = NodeKind::Router(RouterNode {
            prompt: None,
            instructions: None,
            llm: None,
        });
        assert_eq!(check_port(&router, Some("b"), "b"), Ok(()));
        assert_eq!(
            check_port(
                &NodeKind::Reply(ReplyNode {
                    text: "t".into(),
                    data: None
                }),
                Some("x"),
                "b"
            ),
            Err("a reply node has no ports, but the edge names port 'x'".into())
        );
    }
}
