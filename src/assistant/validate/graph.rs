//! Checking the graph: the nodes by id, exactly one `start`, the edges (existing nodes, ports
//! the source kind has, no two ways out by one port, `argMapping`), routers' successors,
//! reachability from `start` and `end` outputs against `outputArgs`.
//!
//! Nodes that have an id but could not be read are `broken`: their problem is already
//! reported, so edges that name them and the start-node count do not report it a second time.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;

use super::nodes::{check_port, parse_node};
use super::{is_ident, Checker};
use crate::assistant::model::*;

/// The nodes that could be read, by id, and what is known of the others.
pub(super) struct Graph {
    pub(super) nodes: Vec<Node>,
    pub(super) index: HashMap<String, usize>,
    pub(super) broken: HashSet<String>,
    broken_starts: usize,
}

impl Graph {
    /// Read every node, reporting the ones that cannot be read and duplicate ids.
    pub(super) fn read(c: &mut Checker<'_>, def: &Definition) -> Graph {
        let mut g = Graph {
            nodes: Vec::new(),
            index: HashMap::new(),
            broken: HashSet::new(),
            broken_starts: 0,
        };
        for (i, raw) in def.nodes.iter().enumerate() {
            match parse_node(c, i, raw) {
                Some(n) => {
                    if g.index.contains_key(&n.id) {
                        c.err(format!("node '{}'", n.id), "duplicate node id");
                        continue;
                    }
                    g.index.insert(n.id.clone(), g.nodes.len());
                    g.nodes.push(n);
                }
                None => {
                    if let Some(id) = raw.get("id").and_then(Value::as_str) {
                        g.broken.insert(id.to_string());
                    }
                    if raw.get("type").and_then(Value::as_str) == Some("start") {
                        g.broken_starts += 1;
                    }
                }
            }
        }
        g
    }

    fn get(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&k| &self.nodes[k])
    }

    /// Every graph check, in order; the start node's index if there is exactly one.
    pub(super) fn check(
        &self,
        c: &mut Checker<'_>,
        def: &Definition,
        loose_edges: &[(String, String)],
    ) -> Option<usize> {
        let starts: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.kind, NodeKind::Start(_)))
            .map(|(i, _)| i)
            .collect();
        match starts.len() + self.broken_starts {
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
        let mut seen_ports: HashSet<(String, String)> = HashSet::new();
        for (i, e) in def.edges.iter().enumerate() {
            self.check_edge(c, i, e, &mut seen_ports);
        }
        self.check_routers(c, def);
        // Reachability (only judged when the start node itself could be read).
        if let ([s], 0) = (&starts[..], self.broken_starts) {
            self.check_reachable(c, *s, def, loose_edges);
        }
        self.check_end_outputs(c, def);
        starts.first().copied()
    }

    fn check_edge(
        &self,
        c: &mut Checker<'_>,
        i: usize,
        e: &Edge,
        seen_ports: &mut HashSet<(String, String)>,
    ) {
        let loc = format!("edge #{} ({} → {})", i + 1, e.from, e.to);
        if self.broken.contains(&e.from) || self.broken.contains(&e.to) {
            return;
        }
        let Some(from) = self.get(&e.from) else {
            c.err(&loc, format!("'from' names no node: '{}'", e.from));
            return;
        };
        let Some(to) = self.get(&e.to) else {
            c.err(&loc, format!("'to' names no node: '{}'", e.to));
            return;
        };
        if matches!(to.kind, NodeKind::Start(_)) {
            c.err(&loc, "no edge may lead into the start node");
        }
        let port = e.port.as_deref();
        if let Err(m) = check_port(&from.kind, port, &e.to) {
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
                if !self.index.contains_key(head) && !self.broken.contains(head) {
                    c.err(
                        &loc,
                        format!("argMapping '{target}': path '{path}' must start with a node id"),
                    );
                }
            }
        }
    }

    /// Routers need successors with descriptions.
    fn check_routers(&self, c: &mut Checker<'_>, def: &Definition) {
        for n in &self.nodes {
            if let NodeKind::Router(_) = n.kind {
                let targets: Vec<&Edge> = def.edges.iter().filter(|e| e.from == n.id).collect();
                if targets.is_empty() {
                    c.err(
                        format!("node '{}'", n.id),
                        "a router needs at least one outgoing edge",
                    );
                }
                for e in targets {
                    if let Some(t) = self.get(&e.to) {
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
    }

    fn check_reachable(
        &self,
        c: &mut Checker<'_>,
        start: usize,
        def: &Definition,
        loose_edges: &[(String, String)],
    ) {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([self.nodes[start].id.clone()]);
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
        for n in &self.nodes {
            if !seen.contains(&n.id) {
                c.err(
                    format!("node '{}'", n.id),
                    "unreachable from the start node",
                );
            }
        }
    }

    /// End outputs against outputArgs.
    fn check_end_outputs(&self, c: &mut Checker<'_>, def: &Definition) {
        if def.output_args.is_empty() {
            return;
        }
        for n in &self.nodes {
            let NodeKind::End(end) = &n.kind else {
                continue;
            };
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
