//! Templates and conditions over the process state (MiniJinja syntax, CONTRACT §1).
//!
//! A string that is exactly one `{{ expr }}` evaluates to the expression's value with its JSON
//! type; any other string renders as text. Conditions are bare expressions judged by Jinja
//! truthiness. Every template of an assistant is compiled once when the assistant is loaded
//! ([`Templates::register`]); rendering looks the compiled form up by its source text.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;

/// Fuel for one evaluation: bounds the work a template can do (loops in definitions).
const FUEL: u64 = 200_000;

/// The compiled templates of one assistant.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// What a string is, once looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape<'a> {
    /// No template syntax at all: used as it is.
    Literal,
    /// Exactly one `{{ expr }}`: evaluates to a JSON value.
    Expr(&'a str),
    /// Anything else: renders to text.
    Text,
}

fn shape(src: &str) -> Shape<'_> {
    if !src.contains("{{") && !src.contains("{%") && !src.contains("{#") {
        return Shape::Literal;
    }
    let t = src.trim();
    if let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        if !inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%") {
            return Shape::Expr(inner.trim().trim_start_matches('-').trim_end_matches('-'));
        }
    }
    Shape::Text
}

fn expr_key(expr: &str) -> String {
    format!("\u{1}expr\u{1}{expr}")
}

fn expr_template(expr: &str) -> String {
    format!("{{{{ ({expr}) | tojson }}}}")
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.set_keep_trailing_newline(true);
        Templates { env }
    }

    /// Compile a template (a string field of a node). Literals need no compiling.
    pub fn register(&mut self, src: &str) -> Result<(), String> {
        match shape(src) {
            Shape::Literal => Ok(()),
            Shape::Expr(e) => {
                self.register_expr(e)?;
                // Also as text: `render_text` of a single expression (a prompt that is just
                // `{{ start.userInput }}`) must not compile it again on every render.
                self.register_text(src)
            }
            Shape::Text => self.register_text(src),
        }
    }

    fn register_text(&mut self, src: &str) -> Result<(), String> {
        if self.env.get_template(src).is_ok() {
            return Ok(());
        }
        self.env
            .add_template_owned(src.to_string(), src.to_string())
            .map_err(describe)
    }

    /// Compile a bare expression (a condition's `when`, an iteration's `over`).
    pub fn register_expr(&mut self, expr: &str) -> Result<(), String> {
        let key = expr_key(expr);
        if self.env.get_template(&key).is_ok() {
            return Ok(());
        }
        // Check the expression alone first so the error message talks about it, not the wrapper.
        self.env.compile_expression(expr).map_err(describe)?;
        self.env
            .add_template_owned(key, expr_template(expr))
            .map_err(describe)
    }

    /// Compile every string inside a JSON value.
    pub fn register_value(&mut self, v: &Value) -> Result<(), String> {
        match v {
            Value::String(s) => self.register(s),
            Value::Array(items) => items.iter().try_for_each(|i| self.register_value(i)),
            Value::Object(map) => map.values().try_for_each(|i| self.register_value(i)),
            _ => Ok(()),
        }
    }

    /// The names a registered string looks up in the state (its free variables, minus the
    /// template globals such as `range`), for checking them against the node ids at load.
    pub fn names(&self, src: &str) -> Vec<String> {
        match shape(src) {
            Shape::Literal => Vec::new(),
            Shape::Expr(e) => self.names_expr(e),
            Shape::Text => self.free(src),
        }
    }

    /// [`Templates::names`] for a registered bare expression.
    pub fn names_expr(&self, expr: &str) -> Vec<String> {
        self.free(&expr_key(expr))
    }

    /// [`Templates::names`] of every string inside a JSON value.
    pub fn names_value(&self, v: &Value) -> Vec<String> {
        match v {
            Value::String(s) => self.names(s),
            Value::Array(items) => items.iter().flat_map(|i| self.names_value(i)).collect(),
            Value::Object(map) => map.values().flat_map(|i| self.names_value(i)).collect(),
            _ => Vec::new(),
        }
    }

    fn free(&self, key: &str) -> Vec<String> {
        let Ok(t) = self.env.get_template(key) else {
            return Vec::new();
        };
        let mut names: Vec<String> = t
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| self.env.globals().all(|(g, _)| g != n))
            .collect();
        names.sort();
        names
    }

    /// Render a string to text (an expression's value is turned to text too).
    pub fn render_text(&self, src: &str, ctx: &Value) -> Result<String, String> {
        match shape(src) {
            Shape::Literal => Ok(src.to_string()),
            Shape::Expr(_) | Shape::Text => self.render_raw(src, ctx),
        }
    }

    /// Evaluate a string: a single `{{ expr }}` keeps its JSON type, anything else is text.
    pub fn eval(&self, src: &str, ctx: &Value) -> Result<Value, String> {
        match shape(src) {
            Shape::Literal => Ok(Value::String(src.to_string())),
            Shape::Expr(e) => self.eval_expr(e, ctx),
            Shape::Text => self.render_raw(src, ctx).map(Value::String),
        }
    }

    /// Evaluate a bare expression to a JSON value.
    pub fn eval_expr(&self, expr: &str, ctx: &Value) -> Result<Value, String> {
        let key = expr_key(expr);
        let text = match self.env.get_template(&key) {
            Ok(t) => t.render(ctx).map_err(describe)?,
            Err(_) => self
                .env
                .render_str(&expr_template(expr), ctx)
                .map_err(describe)?,
        };
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| format!("expression '{expr}' gave no JSON value: {e}"))
    }

    /// Evaluate a condition by Jinja truthiness.
    pub fn eval_bool(&self, expr: &str, ctx: &Value) -> Result<bool, String> {
        Ok(truthy(&self.eval_expr(expr, ctx)?))
    }

    /// Evaluate every string inside a JSON value, keeping the value's shape.
    pub fn eval_value(&self, v: &Value, ctx: &Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => self.eval(s, ctx)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.eval_value(i, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, i) in map {
                    out.insert(k.clone(), self.eval_value(i, ctx)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn render_raw(&self, src: &str, ctx: &Value) -> Result<String, String> {
        match self.env.get_template(src) {
            Ok(t) => t.render(ctx).map_err(describe),
            Err(_) => self.env.render_str(src, ctx).map_err(describe),
        }
    }
}

/// Jinja truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn describe(e: minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({"start": {"userInput": "hi <b>", "n": 3, "dept": "sales"},
               "check": {"score": 0.9}, "list": [1, 2]})
    }

    #[test]
    fn single_expression_keeps_json_type() {
        let t = Templates::new();
        assert_eq!(t.eval("{{ start.n }}", &ctx()).unwrap(), json!(3));
        assert_eq!(t.eval("{{ list }}", &ctx()).unwrap(), json!([1, 2]));
        assert_eq!(
            t.eval(" {{ check }} ", &ctx()).unwrap(),
            json!({"score": 0.9})
        );
        assert_eq!(
            t.eval("{{ start.userInput }}", &ctx()).unwrap(),
            json!("hi <b>")
        );
        assert_eq!(
            t.eval("{{ missing.deep.path }}", &ctx()).unwrap(),
            json!(null)
        );
    }

    #[test]
    fn other_strings_render_as_text() {
        let mut t = Templates::new();
        t.register("n={{ start.n }} of {{ start.dept }}").unwrap();
        assert_eq!(
            t.eval("n={{ start.n }} of {{ start.dept }}", &ctx())
                .unwrap(),
            json!("n=3 of sales")
        );
        assert_eq!(t.eval("plain", &ctx()).unwrap(), json!("plain"));
        // No HTML escaping: this is not a web template.
        assert_eq!(
            t.render_text("{{ start.userInput }}!", &ctx()).unwrap(),
            "hi <b>!"
        );
    }

    #[test]
    fn conditions() {
        let mut t = Templates::new();
        let c = r#"check.score > 0.8 and start.dept == "sales""#;
        t.register_expr(c).unwrap();
        assert!(t.eval_bool(c, &ctx()).unwrap());
        assert!(!t.eval_bool("start.n > 5", &ctx()).unwrap());
        assert!(t.eval_bool("'hi' in start.userInput", &ctx()).unwrap());
    }

    #[test]
    fn syntax_errors_are_reported() {
        let mut t = Templates::new();
        assert!(t.register("{{ a + }}").is_err());
        assert!(t.register("Hello {% if %}").is_err());
        assert!(t.register_expr("a ==").is_err());
    }

    #[test]
    fn values_keep_shape() {
        let t = Templates::new();
        let v = json!({"a": "{{ start.n }}", "b": ["x {{ start.dept }}", true]});
        assert_eq!(
            t.eval_value(&v, &ctx()).unwrap(),
            json!({"a": 3, "b": ["x sales", true]})
        );
    }

    #[test]
    fn names_are_the_free_variables() {
        let mut t = Templates::new();
        let src = "{% for x in items %}{{ x }}{{ loop.index }}{% endfor %}{{ draft.text }} {{ range(3) | join }}";
        t.register(src).unwrap();
        assert_eq!(t.names(src), ["draft", "items"]);
        t.register("{{ a.b + c }}").unwrap();
        assert_eq!(t.names("{{ a.b + c }}"), ["a", "c"]);
        t.register_expr("x > 1 and true and y is defined").unwrap();
        assert_eq!(t.names_expr("x > 1 and true and y is defined"), ["x", "y"]);
        assert!(t.names("plain").is_empty());
        let v = json!({"a": "{{ p }}", "b": ["{{ q }} and {{ r }}"]});
        t.register_value(&v).unwrap();
        assert_eq!(t.names_value(&v), ["p", "q", "r"]);
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let t = Templates::new();
        let r = t.eval(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &ctx(),
        );
        assert!(r.is_err());
    }
}
