//! `llm`: one model call (system, history, prompt); text is streamed to the chat, a JSON
//! answer is checked against `schema` (one repair attempt) and not streamed.

use serde_json::json;

use super::{text, Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::{LlmNode, OutputMode};
use crate::llm::{ChatMessage, ChatRequest};

impl NodeExec for LlmNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(ChatMessage::system(text(t, "system", s, here.ctx)?));
        }
        if self.history {
            messages.extend(run.history.iter().cloned());
        }
        messages.push(ChatMessage::user(text(
            t,
            "prompt",
            &self.prompt,
            here.ctx,
        )?));
        let provider = self.llm.clone().unwrap_or_else(|| run.a.llm.clone());
        let req = ChatRequest {
            messages,
            temperature: self.temperature,
            ..Default::default()
        };
        let output = match (self.output, &self.schema) {
            (OutputMode::Json, Some(schema)) => run.llm_json(&provider, req, schema).await?,
            _ => json!({ "text": run.call_llm(&provider, req, true).await?.text }),
        };
        Step::out(output)
    }
}
