//! The assistant catalog: `GET /api/assistants` and `GET /api/assistants/{id}` (a user is
//! required). The synchronous call, `POST /api/assistants/{id}/invoke`, is in [`super::invoke`].

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{unknown_assistant, ApiResult, Svc};
use crate::assistant::model::ArgSpec;
use crate::gateway::auth::User;
use crate::gateway::ErrorBody;
use crate::services::Services;

/// An assistant as listed by `GET /api/assistants`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssistantSummary {
    pub id: String,
    pub title: String,
    pub description: String,
    pub welcome_message: Option<String>,
    /// Suggested first messages.
    pub prologues: Vec<String>,
    pub input_args: Vec<ArgSpec>,
    pub output_args: Vec<ArgSpec>,
    /// True when no node and no tool can pause a run: it can be called with `invoke`.
    pub automated: bool,
    /// True when its LLM is the built-in offline model.
    pub builtin_model: bool,
}

/// One assistant, `GET /api/assistants/{id}`: the summary plus its args as JSON Schema.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssistantDetail {
    #[serde(flatten)]
    pub summary: AssistantSummary,
    /// The input args as a JSON Schema object.
    pub input_schema: Value,
    /// The output args as a JSON Schema object.
    pub output_schema: Value,
    /// Why it is not automated, e.g. `node 'confirm' (conversation_action)`; only for
    /// assistants that are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_points: Option<Vec<String>>,
    /// The assistant's process: its nodes and edges, for drawing it.
    pub graph: Graph,
}

/// The nodes and edges of an assistant, as its definition has them (in file order).
#[derive(Debug, Serialize, ToSchema)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

/// One node of [`Graph`].
#[derive(Debug, Serialize, ToSchema)]
pub struct GraphNode {
    pub id: String,
    /// The node type as in the definition (`start`, `llm`, `agent`, `page_action`, ...).
    #[serde(rename = "type")]
    #[schema(example = "llm")]
    pub node_type: String,
    /// The node's title, when the definition gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// One edge of [`Graph`]: from a node's port (the default port when absent) to a node.
#[derive(Debug, Serialize, ToSchema)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

impl Graph {
    fn of(a: &crate::assistant::Assistant) -> Graph {
        Graph {
            nodes: a
                .nodes
                .iter()
                .map(|n| GraphNode {
                    id: n.id.clone(),
                    node_type: n.kind.type_name().to_string(),
                    title: n.title.clone(),
                })
                .collect(),
            edges: a
                .edges
                .iter()
                .map(|e| GraphEdge {
                    from: e.from.clone(),
                    to: e.to.clone(),
                    port: e.port.clone(),
                })
                .collect(),
        }
    }
}

fn assistant_summary(svc: &Services, a: &crate::assistant::Assistant) -> AssistantSummary {
    AssistantSummary {
        id: a.id.clone(),
        title: a.title.clone(),
        description: a.description.clone(),
        welcome_message: a.welcome_message.clone(),
        prologues: a.prologues.clone(),
        input_args: a.input_args.clone(),
        output_args: a.output_args.clone(),
        automated: a.automated,
        builtin_model: svc.engine.llms().is_builtin(&a.llm),
    }
}

/// Every assistant.
#[utoipa::path(
    get,
    path = "/api/assistants",
    tag = "assistants",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The assistants", body = [AssistantSummary]),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn list_assistants(svc: Svc, user: User) -> ApiResult {
    let list: Vec<AssistantSummary> = svc
        .catalog
        .iter()
        .filter(|a| user.may_use(&svc.config.auth, &a.id))
        .map(|a| assistant_summary(&svc, a))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// One assistant, with its input and output args as JSON Schema and its graph.
#[utoipa::path(
    get,
    path = "/api/assistants/{id}",
    tag = "assistants",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The assistant's id")),
    responses(
        (status = 200, description = "The assistant", body = AssistantDetail),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn get_assistant(
    svc: Svc,
    id: web::Path<String>,
    user: User,
) -> ApiResult {
    let a = crate::gateway::auth::assistant_for(&svc, &user, &id)
        .ok_or_else(|| unknown_assistant(&id))?;
    Ok(HttpResponse::Ok().json(AssistantDetail {
        summary: assistant_summary(&svc, &a),
        input_schema: a.input_schema(),
        output_schema: crate::assistant::args_schema(&a.output_args),
        pause_points: (!a.automated).then(|| a.pause_points.clone()),
        graph: Graph::of(&a),
    }))
}
