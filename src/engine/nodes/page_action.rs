//! `page_action`: asks the page to run an action; the run pauses until the page answers (or,
//! with `timeoutSeconds`, until the time runs out: port `timeout`, handled by the loop).

use serde_json::json;

use super::{text, value, Answered, Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::PageActionNode;
use crate::engine::{Interrupt, InterruptReason};

impl NodeExec for PageActionNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        let params = value(t, "params", &self.params, here.ctx)?;
        let message = match &self.prompt {
            Some(p) => text(t, "prompt", p, here.ctx)?,
            None => String::new(),
        };
        let expires_at = self.timeout_seconds.map(|s| {
            let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(s as i64);
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        Step::pause(
            Interrupt::new(InterruptReason::PageAction, here.id, message)
                .page_action(self.action.clone(), params)
                .expires_at(expires_at),
        )
    }

    async fn resume(&self, _run: &mut Run<'_>, a: Answered) -> StepResult {
        Step::out(json!({ "value": a.value }))
    }
}
