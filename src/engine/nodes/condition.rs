//! `condition`: leaves by the first branch whose `when` is true, else by `else`.

use serde_json::json;

use super::{Here, NodeExec, Run, Step, StepErr, StepResult};
use crate::assistant::model::{port, ConditionNode};

impl NodeExec for ConditionNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        for b in &self.branches {
            let expr = crate::assistant::strip_braces(&b.when);
            let yes = t
                .eval_bool(expr, here.ctx)
                .map_err(|e| StepErr::failed(format!("branch '{}': {e}", b.port)))?;
            if yes {
                return Step::by(b.port.clone(), json!({ "port": b.port }));
            }
        }
        Step::by(port::ELSE, json!({ "port": port::ELSE }))
    }
}
