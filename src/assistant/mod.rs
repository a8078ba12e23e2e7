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
use crate::schema::{self, JsonSchema};
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
    /// The input args as a JSON Schema ([`args_schema`]), compiled at load:
    /// [`Assistant::check_args`] validates with it.
    pub input_args_schema: JsonSchema,
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
    /// Each router's choice schema ([`Assistant::router_choices`]), compiled at load.
    pub(crate) router_schemas: HashMap<String, JsonSchema>,
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

    /// Check and complete a message's custom args: null counts as absent, defaults are filled
    /// in, then the whole is validated against [`Assistant::input_args_schema`] (types, enums,
    /// required args, unknown args refused). The error is `invalid_args` with a `details` list
    /// of `{field, message}`: one per bad field, in the order of `inputArgs`, then unknown args.
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
        // A null arg is absent; an unknown one is refused even when null.
        let known = |k: &str| self.input_args.iter().any(|s| s.name == k);
        let mut out: Map<String, Value> = given
            .iter()
            .filter(|(k, v)| !v.is_null() || !known(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for spec in &self.input_args {
            if let (None, Some(d)) = (out.get(&spec.name), &spec.default) {
                out.insert(spec.name.clone(), d.clone());
            }
        }
        let out = Value::Object(out);
        let problems = match (self.arg_problems(&out), out) {
            (Ok(()), Value::Object(out)) => return Ok(out),
            (Ok(()), _) => return Err(ApiError::internal("args were not an object")),
            (Err(problems), _) => problems,
        };
        let mut bad = args_problems(&self.input_args, given, problems);
        bad.sort_by_key(|(rank, _, _)| *rank);
        let names: Vec<String> = bad.iter().map(|(_, f, m)| format!("{f} {m}")).collect();
        let details: Vec<Value> = bad
            .into_iter()
            .map(|(_, field, message)| json!({"field": field, "message": message}))
            .collect();
        Err(ApiError::new(
            ErrorCode::InvalidArgs,
            format!("invalid args: {}", names.join("; ")),
        )
        .with_details(Value::Array(details)))
    }

    /// The problems of completed args (`Ok` when there are none).
    fn arg_problems(&self, args: &Value) -> Result<(), Vec<schema::Problem>> {
        match self.input_args_schema.compiled() {
            Some(s) if s.is_valid(args) => Ok(()),
            Some(s) => Err(s.problems(args)),
            // Not reached: an assistant whose args schema does not compile is never built.
            None => Err(vec![schema::Problem {
                at: Vec::new(),
                what: schema::What::Other(": the input args' schema is invalid".into()),
            }]),
        }
    }

    /// The input args as a JSON Schema object.
    pub fn input_schema(&self) -> Value {
        self.input_args_schema.source().clone()
    }

    /// The JSON Schema of a router's answer: `{"choice": <one of its successors>}`, each
    /// with its node's description.
    pub fn router_choices(&self, router: &str) -> Value {
        let options: Vec<Value> = self
            .successors(router)
            .map(|e| {
                let desc = self
                    .node(&e.to)
                    .and_then(|n| n.description.as_deref())
                    .unwrap_or_default();
                json!({"const": e.to, "description": desc})
            })
            .collect();
        json!({
            "type": "object",
            "properties": {"choice": {"type": "string", "anyOf": options}},
            "required": ["choice"]
        })
    }

    /// A router's compiled [`Assistant::router_choices`].
    pub fn router_schema(&self, router: &str) -> Option<&JsonSchema> {
        self.router_schemas.get(router)
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

/// The schema's problems as `(rank, field, message)`, one per field (the first of: missing,
/// wrong type, not allowed, anything else): rank orders them as `inputArgs`, then unknown
/// args in the order given.
fn args_problems(
    specs: &[ArgSpec],
    given: &Map<String, Value>,
    problems: Vec<schema::Problem>,
) -> Vec<(usize, String, String)> {
    use schema::{Segment, What};
    let priority = |w: &What| match w {
        What::Required => 0,
        What::Type { .. } => 1,
        _ => 2,
    };
    let mut best: Vec<(usize, String, u8, String)> = Vec::new();
    for p in problems {
        let field = match p.at.first() {
            Some(Segment::Key(k)) => k.clone(),
            Some(Segment::Index(i)) => i.to_string(),
            None => "args".to_string(),
        };
        let rank = specs
            .iter()
            .position(|s| s.name == field)
            .or_else(|| {
                given
                    .keys()
                    .position(|k| *k == field)
                    .map(|i| specs.len() + i)
            })
            .unwrap_or(usize::MAX);
        let message = match &p.what {
            What::Required if p.at.len() == 1 => "is required".to_string(),
            What::NotAllowed if p.at.len() == 1 => "is not an input arg of this assistant".into(),
            What::Type {
                expected: Value::String(t),
                ..
            } if p.at.len() == 1 => format!("must be {t}"),
            What::Enum(options) if p.at.len() == 1 => format!("must be one of {options}"),
            // Deeper, or another keyword: the schema's words after the field's path.
            _ => {
                let whole = p.to_string();
                let path = format!("$.{field}");
                whole
                    .strip_prefix(&path)
                    .unwrap_or(&whole)
                    .trim_start_matches([' ', ':'])
                    .to_string()
            }
        };
        let pri = priority(&p.what);
        match best.iter_mut().find(|b| b.1 == field) {
            Some(b) if pri < b.2 => *b = (rank, field, pri, message),
            Some(_) => {}
            None => best.push((rank, field, pri, message)),
        }
    }
    best.into_iter().map(|(r, f, _, m)| (r, f, m)).collect()
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
