//! `iteration`: loops its `body` port over a list, then leaves by `done`.
//!
//! The first visit evaluates `over` and pushes a [`LoopFrame`] (its list shared, so each
//! step's checkpoint stays O(1)); the body's last node has no edge, so the loop in `run.rs`
//! comes back here, and each later visit moves to the next item.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{short, Here, NodeExec, Run, Step, StepErr, StepResult};
use crate::assistant::model::{port, IterationNode};
use crate::engine::LoopFrame;

impl NodeExec for IterationNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let id = here.id;
        let again = run.cp.loops.last().is_some_and(|f| f.node == id);
        if again {
            if let Some(f) = run.cp.loops.last_mut() {
                f.index += 1;
            }
        } else {
            let expr = crate::assistant::strip_braces(&self.over);
            let items = match run.a.templates.eval_expr(expr, here.ctx) {
                Ok(Value::Array(items)) => items,
                Ok(Value::Null) => Vec::new(),
                Ok(other) => {
                    return Err(StepErr::failed(format!(
                        "'over' must give a list, got {}",
                        short(&other)
                    )))
                }
                Err(e) => return Err(StepErr::failed(format!("over: {e}"))),
            };
            run.cp.loops.push(LoopFrame {
                node: id.to_string(),
                items: Arc::new(items),
                index: 0,
            });
        }
        let Some(frame) = run.cp.loops.last() else {
            return Err(StepErr::failed("iteration lost its loop"));
        };
        let count = frame.items.len();
        if frame.index < count {
            let out =
                json!({"index": frame.index, "item": frame.items[frame.index], "count": count});
            Step::by(port::BODY, out)
        } else {
            run.cp.loops.pop();
            Step::by(
                port::DONE,
                json!({"index": count, "item": null, "count": count}),
            )
        }
    }
}
