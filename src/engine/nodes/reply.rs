//! `reply`: a fixed (templated) message to the chat, with optional card `data`.

use serde_json::json;

use super::{new_id, text, value, Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::ReplyNode;
use crate::engine::Event;
use crate::llm::Role;

impl NodeExec for ReplyNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        let text = text(t, "text", &self.text, here.ctx)?;
        let data = match &self.data {
            Some(d) => Some(value(t, "data", d, here.ctx)?),
            None => None,
        };
        let message_id = new_id();
        run.emit(Event::TextMessageStart {
            message_id: message_id.clone(),
            role: Role::Assistant,
        })
        .await;
        run.emit(Event::TextMessageContent {
            message_id: message_id.clone(),
            delta: text.clone(),
        })
        .await;
        run.emit(Event::TextMessageEnd { message_id }).await;
        if let Some(d) = &data {
            run.emit(Event::Custom {
                name: "card".into(),
                value: d.clone(),
            })
            .await;
        }
        let mut out = json!({ "text": text });
        if let Some(d) = data {
            out["data"] = d;
        }
        Step::out(out)
    }
}
