//! `start`: its output is the message and the args the run began with (already in the state).

use serde_json::json;

use super::{Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::StartNode;

impl NodeExec for StartNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        Step::out(
            run.cp
                .state
                .get(here.id)
                .cloned()
                .unwrap_or_else(|| json!({})),
        )
    }
}
