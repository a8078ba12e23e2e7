//! `conversation_action`: a card with buttons; the run pauses until a person presses one (or
//! sends a message: action `reply`). It leaves by the button's port.

use serde_json::{json, Value};

use super::{text, value, Answered, Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::{action, ConversationActionNode};
use crate::engine::{Interrupt, InterruptReason};

impl NodeExec for ConversationActionNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        let message = text(t, "message", &self.message, here.ctx)?;
        let payload = match &self.display {
            Some(d) => value(t, "display", d, here.ctx)?,
            None => Value::Null,
        };
        Step::pause(
            Interrupt::new(InterruptReason::ConversationAction, here.id, message)
                .payload(payload)
                .buttons(self.buttons.clone())
                .editable(self.editable),
        )
    }

    async fn resume(&self, _run: &mut Run<'_>, a: Answered) -> StepResult {
        let act = a.action.unwrap_or_else(|| action::REPLY.into());
        // An editable card's answer replaces the data it showed (a plain reply does not).
        let data = if self.editable && !a.value.is_null() && act != action::REPLY {
            a.value.clone()
        } else {
            a.interrupt.payload
        };
        let out = json!({"action": act, "value": a.value, "data": data});
        Step::by(act, out)
    }
}
