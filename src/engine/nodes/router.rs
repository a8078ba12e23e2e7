//! `router`: the model chooses one of the node's successors by their descriptions; the node
//! leaves by the chosen target's id.

use serde_json::{json, Value};

use super::{text, Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::RouterNode;
use crate::llm::{ChatMessage, ChatRequest};
use crate::schema::JsonSchema;

impl NodeExec for RouterNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let a = run.a;
        let t = &a.templates;
        let mut listing = String::new();
        for e in a.successors(here.id) {
            let desc = a
                .node(&e.to)
                .and_then(|n| n.description.as_deref())
                .unwrap_or_default();
            listing.push_str(&format!("- {}: {}\n", e.to, desc));
        }
        // Compiled at load (`Assistant::router_schema`); built here only for a node the
        // assistant was not compiled with.
        let built;
        let schema = match a.router_schema(here.id) {
            Some(s) => s,
            None => {
                built = JsonSchema::new(a.router_choices(here.id));
                &built
            }
        };
        let instructions = match &self.instructions {
            Some(i) => text(t, "instructions", i, here.ctx)?,
            None => "Choose the handler that fits the user's request best.".to_string(),
        };
        let prompt = match &self.prompt {
            Some(p) => text(t, "prompt", p, here.ctx)?,
            None => run.user_input(),
        };
        let system = format!(
            "{instructions}\nThe handlers:\n{listing}Answer with a JSON object {{\"choice\": \"<handler id>\"}}."
        );
        let req = ChatRequest {
            messages: vec![ChatMessage::system(system), ChatMessage::user(prompt)],
            ..Default::default()
        };
        let provider = self.llm.clone().unwrap_or_else(|| a.llm.clone());
        let out = run.llm_json(&provider, req, schema).await?;
        let choice = out
            .get("choice")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Step::by(choice.clone(), json!({ "choice": choice }))
    }
}
