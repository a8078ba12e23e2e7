//! `end`: evaluates `outputs` into the run's result and checks it against `outputArgs`.

use serde_json::{Map, Value};

use super::{short, Here, NodeExec, Run, Step, StepErr, StepResult};
use crate::assistant::model::{ArgSpec, EndNode};

impl NodeExec for EndNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        let mut result = Map::new();
        for (k, v) in &self.outputs {
            let val = t
                .eval_value(v, here.ctx)
                .map_err(|e| StepErr::failed(format!("output '{k}': {e}")))?;
            result.insert(k.clone(), val);
        }
        for spec in &run.a.output_args {
            if let Some(v) = result.get(&spec.name) {
                check_output(spec, v)?;
            }
        }
        Ok(Step::End {
            result: Value::Object(result),
        })
    }
}

/// An output against its declaration: type, required, enum.
fn check_output(spec: &ArgSpec, v: &Value) -> Result<(), StepErr> {
    if !v.is_null() && !spec.ty.accepts(v) {
        return Err(StepErr::failed(format!(
            "output '{}' must be {}, got {}",
            spec.name,
            spec.ty.as_str(),
            short(v)
        )));
    }
    if v.is_null() && spec.required {
        return Err(StepErr::failed(format!(
            "required output '{}' is empty",
            spec.name
        )));
    }
    if !v.is_null() && spec.choices.as_ref().is_some_and(|c| !c.contains(v)) {
        return Err(StepErr::failed(format!(
            "output '{}' must be one of {}, got {}",
            spec.name,
            Value::Array(spec.choices.clone().unwrap_or_default()),
            short(v)
        )));
    }
    Ok(())
}
