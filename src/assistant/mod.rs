//! Assistant definitions: loading, validation, arg schemas, automated or interactive.
//!
//! A definition file is parsed into [`model::Definition`], then [`compile`] checks the whole
//! graph and produces an [`Assistant`]: the immutable, validated form the engine runs. Every
//! problem of a file is reported at once, each naming the file, the node or edge, and what is
//! wrong. Whether an assistant is *automated* (nothing can pause it) is decided here, once
//! (DESIGN invariant 6).

pub mod model;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::template::Templates;
use model::{ArgSpec, Edge, Node, NodeKind, OnBusy, ToolSpec};

pub use validate::compile;
pub(crate) use validate::strip_braces;

/// One problem in a definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: String,
    /// `node 'draft'`, `edge #3 (draft → confirm)`, `inputArgs[1]`, or empty for the whole file.
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.location, self.message)
        }
    }
}

/// What a definition may refer to outside itself.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Tools from `config.toml` (an assistant's own tools win on a name clash).
    pub tools: BTreeMap<String, ToolSpec>,
    /// Names of the configured LLM providers.
    pub llms: Vec<String>,
    pub default_max_steps: u32,
    pub default_session_timeout: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            tools: BTreeMap::new(),
            llms: vec!["default".to_string()],
            default_max_steps: 1000,
            default_session_timeout: 3600,
        }
    }
}

/// A validated assistant, ready to run.
#[derive(Debug)]
pub struct Assistant {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The default LLM provider name for this assistant's nodes.
    pub llm: String,
    pub welcome_message: Option<String>,
    pub prologues: Vec<String>,
    pub session_timeout: Duration,
    /// `retentionDays`: how long a finished conversation is kept after its last activity
    /// (`None`: the server's `[storage] retention_days`; zero: kept forever).
    pub retention: Option<Duration>,
    pub input_args: Vec<ArgSpec>,
    pub output_args: Vec<ArgSpec>,
    pub on_busy: OnBusy,
    pub max_steps: u32,
    /// Every tool this assistant can use (its own and the config's).
    pub tools: BTreeMap<String, ToolSpec>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// True when no node and no tool can pause a run.
    pub automated: bool,
    /// Why it is not automated (empty when it is): e.g. `node 'confirm' (conversation_action)`.
    pub pause_points: Vec<String>,
    pub templates: Templates,
    /// The file it came from.
    pub source: PathBuf,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) start: usize,
}

impl Assistant {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    pub fn start_node(&self) -> &Node {
        &self.nodes[self.start]
    }

    /// The edge a node leaves by for a result `port` (`None`: the node's normal way out).
    ///
    /// Rules: an edge with that exact port; for a router, an edge to the chosen node; for a
    /// node without ports, the edge without a port.
    pub fn next_edge(&self, from: &str, port: Option<&str>) -> Option<&Edge> {
        let node = self.node(from)?;
        let is_router = matches!(node.kind, NodeKind::Router(_));
        self.edges.iter().find(|e| {
            e.from == from
                && match port {
                    Some(p) => {
                        e.port.as_deref() == Some(p) || (is_router && e.port.is_none() && e.to == p)
                    }
                    None => e.port.is_none(),
                }
        })
    }

    /// The successors of a node (for routers: the candidates).
    pub fn successors(&self, from: &str) -> impl Iterator<Item = &Edge> {
        let from = from.to_string();
        self.edges.iter().filter(move |e| e.from == from)
    }

    /// Check and complete a message's custom args: defaults filled in, types and enums checked,
    /// required args present, unknown args refused. The error is `invalid_args` with a
    /// `details` list of `{field, message}`.
    pub fn check_args(&self, args: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
        let empty = Map::new();
        let given = match args {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(
                    ApiError::new(ErrorCode::InvalidArgs, "args must be a JSON object")
                        .with_details(
                            json!([{"field": "args", "message": "must be a JSON object"}]),
                        ),
                )
            }
        };
        let mut out = Map::new();
        let mut bad = Vec::new();
        for spec in &self.input_args {
            match given.get(&spec.name) {
                Some(v) if !v.is_null() => {
                    if !spec.ty.accepts(v) {
                        bad.push(json!({"field": spec.name,
                            "message": format!("must be {}", spec.ty.as_str())}));
                    } else if spec.choices.as_ref().is_some_and(|c| !c.contains(v)) {
                        bad.push(json!({"field": spec.name,
                            "message": format!("must be one of {}", Value::Array(spec.choices.clone().unwrap_or_default()))}));
                    } else {
                        out.insert(spec.name.clone(), v.clone());
                    }
                }
                _ => match &spec.default {
                    Some(d) => {
                        out.insert(spec.name.clone(), d.clone());
                    }
                    None if spec.required => {
                        bad.push(json!({"field": spec.name, "message": "is required"}));
                    }
                    None => {}
                },
            }
        }
        for k in given.keys() {
            if !self.input_args.iter().any(|s| &s.name == k) {
                bad.push(json!({"field": k, "message": "is not an input arg of this assistant"}));
            }
        }
        if bad.is_empty() {
            Ok(out)
        } else {
            let names: Vec<String> = bad
                .iter()
                .map(|b| {
                    format!(
                        "{} {}",
                        b["field"].as_str().unwrap_or("?"),
                        b["message"].as_str().unwrap_or("")
                    )
                })
                .collect();
            Err(ApiError::new(
                ErrorCode::InvalidArgs,
                format!("invalid args: {}", names.join("; ")),
            )
            .with_details(Value::Array(bad)))
        }
    }

    /// The input args as a JSON Schema object.
    pub fn input_schema(&self) -> Value {
        args_schema(&self.input_args)
    }

    /// The public description (`GET /api/assistants`).
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "welcomeMessage": self.welcome_message,
            "prologues": self.prologues,
            "inputArgs": self.input_args,
            "outputArgs": self.output_args,
            "automated": self.automated,
        })
    }
}

/// A list of args as a JSON Schema object.
pub fn args_schema(args: &[ArgSpec]) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for a in args {
        let mut p = Map::new();
        p.insert("type".into(), json!(a.ty.as_str()));
        if let Some(t) = &a.title {
            p.insert("title".into(), json!(t));
        }
        if let Some(d) = &a.description {
            p.insert("description".into(), json!(d));
        }
        if let Some(d) = &a.default {
            p.insert("default".into(), d.clone());
        }
        if let Some(c) = &a.choices {
            p.insert("enum".into(), Value::Array(c.clone()));
        }
        if a.required {
            required.push(json!(a.name));
        }
        props.insert(a.name.clone(), Value::Object(p));
    }
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// Every assistant of a directory, by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    by_id: BTreeMap<String, Arc<Assistant>>,
}

impl Catalog {
    pub fn get(&self, id: &str) -> Option<Arc<Assistant>> {
        self.by_id.get(id).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Assistant>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn from_assistants(list: Vec<Assistant>) -> Self {
        Catalog {
            by_id: list
                .into_iter()
                .map(|a| (a.id.clone(), Arc::new(a)))
                .collect(),
        }
    }

    /// Load and validate every `*.json` file of `dir`. All errors of all files are returned.
    pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Catalog, Vec<DefinitionError>> {
        let label = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![DefinitionError {
                file: label.clone(),
                location: String::new(),
                message: format!("cannot read the assistants directory: {e}"),
            }]
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut errors = Vec::new();
        let mut list: Vec<Assistant> = Vec::new();
        for path in paths {
            let file = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(DefinitionError {
                        file,
                        location: String::new(),
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("assistant");
            match compile(&file, stem, &text, opts) {
                Ok(mut a) => {
                    a.source = path.clone();
                    if let Some(other) = list.iter().find(|o| o.id == a.id) {
                        errors.push(DefinitionError {
                            file,
                            location: String::new(),
                            message: format!(
                                "id '{}' is already used by {}",
                                a.id,
                                other.source.display()
                            ),
                        });
                    } else {
                        list.push(a);
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(Catalog::from_assistants(list))
        } else {
            Err(errors)
        }
    }
}
