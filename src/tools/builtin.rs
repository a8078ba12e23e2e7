//! Builtin tools: small functions that work offline (`echo`, `calculator`, `clock`, `lookup`).
//!
//! Everything here takes arguments that may come straight from an LLM, so nothing panics on
//! bad input: each function answers with a JSON result or a message saying what was wrong.
//! The calculator is a tiny recursive-descent parser over numbers and `+ - * / %` with
//! parentheses and unary signs; user input never reaches the template engine.

use serde_json::{json, Map, Number, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The builtin functions (also what `assistant::validate` accepts in definitions).
pub const FUNCTIONS: &[&str] = &["echo", "calculator", "clock", "lookup"];

/// Longest expression the calculator accepts, in characters.
pub const MAX_EXPRESSION_CHARS: usize = 500;

/// Deepest nesting of parentheses and unary signs the calculator accepts.
const MAX_DEPTH: usize = 64;

/// Runs the builtin `function` with `args`; `data` is the tool spec's `data` (for `lookup`).
pub fn call(function: &str, args: Value, data: Option<&Value>) -> Result<Value, String> {
    match function {
        "echo" => Ok(args),
        "calculator" => calculator(&args),
        "clock" => clock(),
        "lookup" => lookup(&args, data),
        other => Err(format!(
            "unknown builtin function '{other}' (known: {})",
            FUNCTIONS.join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// calculator

/// `{"expression": "2 * (3 + 4)"}` → `{"expression": "2 * (3 + 4)", "result": 14}`.
/// A bare string argument is taken as the expression too.
fn calculator(args: &Value) -> Result<Value, String> {
    let expr = match args {
        Value::String(s) => s.as_str(),
        Value::Object(m) => match m.get("expression") {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Number(n)) => return Ok(json!({"expression": n.to_string(), "result": n})),
            Some(_) => return Err("calculator: 'expression' must be a string".into()),
            None => {
                return Err(
                    "calculator: missing 'expression' (a string such as \"2 * (3 + 4)\")".into(),
                )
            }
        },
        _ => return Err("calculator: arguments must be an object with 'expression'".into()),
    };
    let result = evaluate(expr).map_err(|e| format!("calculator: {e}"))?;
    Ok(json!({"expression": expr, "result": to_number(result)}))
}

/// A finite f64 as a JSON number: whole numbers within f64's exact range become integers.
fn to_number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT {
        // In range and whole: the cast is exact. `-0` becomes `0`.
        return Value::Number(Number::from(x as i64));
    }
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Evaluates an arithmetic expression: numbers (with decimals), `+ - * / %`, parentheses and
/// unary `-`/`+`, with the usual precedence; `%` is the remainder with the dividend's sign.
pub fn evaluate(src: &str) -> Result<f64, String> {
    if src.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(format!(
            "expression is longer than {MAX_EXPRESSION_CHARS} characters"
        ));
    }
    let tokens = tokenize(src)?;
    if tokens.is_empty() {
        return Err("empty expression".into());
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if let Some(t) = p.peek() {
        return Err(format!(
            "unexpected {} at position {}",
            t.tok.describe(),
            t.at
        ));
    }
    if !v.is_finite() {
        return Err("the result is too large".into());
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(f64),
    Op(char),
    Open,
    Close,
}

impl Tok {
    fn describe(self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Op(c) => format!("'{c}'"),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Token {
    tok: Tok,
    /// 1-based character position, for messages.
    at: usize,
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '0'..='9' | '.' => {
                let start = i;
                let mut dots = 0;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    if chars[i] == '.' {
                        dots += 1;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                if dots > 1 || text == "." {
                    return Err(format!("malformed number '{text}' at position {at}"));
                }
                let n: f64 = text
                    .parse()
                    .map_err(|_| format!("malformed number '{text}' at position {at}"))?;
                if !n.is_finite() {
                    return Err(format!("number at position {at} is too large"));
                }
                out.push(Token {
                    tok: Tok::Num(n),
                    at,
                });
            }
            '+' | '-' | '*' | '/' | '%' => {
                out.push(Token { tok: Tok::Op(c), at });
                i += 1;
            }
            '(' => {
                out.push(Token { tok: Tok::Open, at });
                i += 1;
            }
            ')' => {
                out.push(Token { tok: Tok::Close, at });
                i += 1;
            }
            other => {
                return Err(format!(
                    "unexpected character '{other}' at position {at} (allowed: numbers, + - * / %, parentheses)"
                ))
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).copied()
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("expression is nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    /// expr := term (('+' | '-') term)*
    fn expr(&mut self) -> Result<f64, String> {
        let mut acc = self.term()?;
        while let Some(Token {
            tok: Tok::Op(op @ ('+' | '-')),
            ..
        }) = self.peek()
        {
            self.pos += 1;
            let rhs = self.term()?;
            acc = if op == '+' { acc + rhs } else { acc - rhs };
        }
        Ok(acc)
    }

    /// term := unary (('*' | '/' | '%') unary)*
    fn term(&mut self) -> Result<f64, String> {
        let mut acc = self.unary()?;
        while let Some(Token {
            tok: Tok::Op(op @ ('*' | '/' | '%')),
            at,
        }) = self.peek()
        {
            self.pos += 1;
            let rhs = self.unary()?;
            acc = match op {
                '*' => acc * rhs,
                _ if rhs == 0.0 => {
                    return Err(format!("division by zero at position {at}"));
                }
                '/' => acc / rhs,
                _ => acc % rhs,
            };
        }
        Ok(acc)
    }

    /// unary := ('-' | '+') unary | primary
    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(Token {
                tok: Tok::Op(op @ ('+' | '-')),
                ..
            }) => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(if op == '-' { -v } else { v })
            }
            _ => self.primary(),
        }
    }

    /// primary := number | '(' expr ')'
    fn primary(&mut self) -> Result<f64, String> {
        let Some(t) = self.peek() else {
            return Err("the expression ends too early".into());
        };
        self.pos += 1;
        match t.tok {
            Tok::Num(n) => Ok(n),
            Tok::Open => {
                self.enter()?;
                let v = self.expr()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Token {
                        tok: Tok::Close, ..
                    }) => {
                        self.pos += 1;
                        Ok(v)
                    }
                    Some(other) => Err(format!(
                        "expected ')' but found {} at position {}",
                        other.tok.describe(),
                        other.at
                    )),
                    None => Err(format!("unclosed '(' at position {}", t.at)),
                }
            }
            other => Err(format!(
                "unexpected {} at position {}",
                other.describe(),
                t.at
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// clock

/// `{"now": "2025-01-31T12:00:00Z", "unix": 1738324800}` (UTC).
fn clock() -> Result<Value, String> {
    let now = OffsetDateTime::now_utc();
    let text = now
        .format(&Rfc3339)
        .map_err(|e| format!("clock: cannot format the time: {e}"))?;
    Ok(json!({"now": text, "unix": now.unix_timestamp()}))
}

// ---------------------------------------------------------------------------------------------
// lookup

/// Looks `args.key` up in the tool's `data` (case-insensitively); failing a key, picks the first
/// data key (in definition order) contained in `args.query`. A bare string argument is a key.
/// → `{"key": ..., "found": bool, "value": ...}`.
fn lookup(args: &Value, data: Option<&Value>) -> Result<Value, String> {
    let Some(Value::Object(data)) = data else {
        return Err("lookup: this tool has no 'data' object to look in".into());
    };
    let (key, query) = match args {
        Value::String(s) => (Some(s.clone()), None),
        Value::Object(m) => (
            m.get("key").and_then(scalar_text),
            m.get("query").and_then(scalar_text),
        ),
        _ => (None, None),
    };
    if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
        let wanted = key.trim().to_lowercase();
        return Ok(match find(data, |k| k.to_lowercase() == wanted) {
            Some((k, v)) => json!({"key": k, "found": true, "value": v}),
            None => json!({"key": key, "found": false, "value": null}),
        });
    }
    if let Some(query) = query {
        let text = query.to_lowercase();
        return Ok(
            match find(data, |k| {
                let k = k.trim().to_lowercase();
                !k.is_empty() && text.contains(&k)
            }) {
                Some((k, v)) => json!({"key": k, "found": true, "value": v}),
                None => json!({"key": null, "found": false, "value": null}),
            },
        );
    }
    Err("lookup: give 'key' (or 'query', a text mentioning a key)".into())
}

fn find(data: &Map<String, Value>, matches: impl Fn(&str) -> bool) -> Option<(&String, &Value)> {
    data.iter().find(|(k, _)| matches(k))
}

/// A string, number or boolean as text (LLMs sometimes send `"key": 42`).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calc(s: &str) -> Result<f64, String> {
        evaluate(s)
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(calc("1 + 2 * 3").unwrap(), 7.0);
        assert_eq!(calc("10 - 4 - 3").unwrap(), 3.0);
        assert_eq!(calc("100 / 10 / 5").unwrap(), 2.0);
        assert_eq!(calc("2 * 3 % 4").unwrap(), 2.0);
        assert_eq!(calc("7 % 4 * 2").unwrap(), 6.0);
        assert_eq!(calc("1 + 10 % 4").unwrap(), 3.0);
    }

    #[test]
    fn parentheses_unary_and_decimals() {
        assert_eq!(calc("(1 + 2) * 3").unwrap(), 9.0);
        assert_eq!(calc("((2))").unwrap(), 2.0);
        assert_eq!(calc("-3 + 5").unwrap(), 2.0);
        assert_eq!(calc("-(2 + 3) * 2").unwrap(), -10.0);
        assert_eq!(calc("--4").unwrap(), 4.0);
        assert_eq!(calc("2 * -3").unwrap(), -6.0);
        assert_eq!(calc("+5").unwrap(), 5.0);
        assert_eq!(calc("1.5 * 2").unwrap(), 3.0);
        assert_eq!(calc(".5 + 0.25").unwrap(), 0.75);
        assert_eq!(calc("3.").unwrap(), 3.0);
        assert_eq!(calc("-7 % 3").unwrap(), -1.0);
        assert_eq!(calc(" 12\t/\n4 ").unwrap(), 3.0);
    }

    #[test]
    fn errors_are_clear() {
        let e = calc("1 / 0").unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        let e = calc("5 % (2 - 2)").unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        assert!(calc("").unwrap_err().contains("empty"));
        assert!(calc("   ").unwrap_err().contains("empty"));
        assert!(calc("1 +").unwrap_err().contains("ends too early"));
        assert!(calc("(1 + 2").unwrap_err().contains("unclosed '('"));
        assert!(calc("1 + 2)").unwrap_err().contains("unexpected ')'"));
        assert!(calc("2 3").unwrap_err().contains("unexpected number 3"));
        assert!(calc("1..2").unwrap_err().contains("malformed number"));
        assert!(calc(".").unwrap_err().contains("malformed number"));
        assert!(calc("* 2").unwrap_err().contains("unexpected '*'"));
        assert!(calc("()").unwrap_err().contains("unexpected ')'"));
        let e = calc("2 ^ 3").unwrap_err();
        assert!(e.contains("'^' at position 3"), "{e}");
        assert!(calc("{{ 7 * 7 }}").is_err());
        assert!(calc("__import__('os')").is_err());
        let long = "1+".repeat(300) + "1";
        assert!(calc(&long).unwrap_err().contains("longer than 500"));
        let deep = "(".repeat(100) + "1" + &")".repeat(100);
        assert!(calc(&deep).unwrap_err().contains("nested"));
        let minus = "-".repeat(200) + "1";
        assert!(calc(&minus).unwrap_err().contains("nested"));
        let e = calc(&"9".repeat(400)).unwrap_err();
        assert!(e.contains("number at position 1 is too large"), "{e}");
        let huge = "9".repeat(300) + "*" + &"9".repeat(100);
        assert!(calc(&huge).unwrap_err().contains("result is too large"));
    }

    #[test]
    fn calculator_tool_shapes() {
        let r = call("calculator", json!({"expression": "2 * (3 + 4)"}), None).unwrap();
        assert_eq!(r, json!({"expression": "2 * (3 + 4)", "result": 14}));
        assert!(r["result"].is_i64());
        let r = call("calculator", json!({"expression": "1 / 4"}), None).unwrap();
        assert_eq!(r["result"], json!(0.25));
        let r = call("calculator", json!("10 % 3"), None).unwrap();
        assert_eq!(r["result"], json!(1));
        let r = call("calculator", json!({"expression": "-0"}), None).unwrap();
        assert_eq!(r["result"], json!(0));
        let e = call("calculator", json!({}), None).unwrap_err();
        assert!(e.contains("missing 'expression'"), "{e}");
        let e = call("calculator", json!({"expression": [1]}), None).unwrap_err();
        assert!(e.contains("must be a string"), "{e}");
        let e = call("calculator", json!({"expression": "1/0"}), None).unwrap_err();
        assert!(e.starts_with("calculator: division by zero"), "{e}");
    }

    proptest! {
        #[test]
        fn random_text_never_panics(s in "\\PC{0,600}") {
            let _ = evaluate(&s);
        }

        #[test]
        fn random_arithmetic_never_panics(s in "[0-9.+\\-*/% ()]{0,600}") {
            if let Ok(v) = evaluate(&s) {
                prop_assert!(v.is_finite());
            }
        }

        #[test]
        fn integers_add_up(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000) {
            let v = evaluate(&format!("{a} + ({b}) * 2 - {a}")).unwrap();
            prop_assert_eq!(v, (b * 2) as f64);
        }
    }

    #[test]
    fn echo_returns_args_unchanged() {
        let args = json!({"a": [1, {"b": null}], "s": "x"});
        assert_eq!(call("echo", args.clone(), None).unwrap(), args);
        assert_eq!(call("echo", json!("plain"), None).unwrap(), json!("plain"));
    }

    #[test]
    fn clock_is_rfc3339_utc() {
        let r = call("clock", json!({}), None).unwrap();
        let now = r["now"].as_str().unwrap();
        assert!(now.ends_with('Z'), "{now}");
        let unix = r["unix"].as_i64().unwrap();
        assert!(unix > 1_700_000_000);
        // `now` and `unix` are the same instant: equal down to the second.
        let from_unix = OffsetDateTime::from_unix_timestamp(unix)
            .unwrap()
            .format(&Rfc3339)
            .unwrap();
        assert_eq!(&now[..19], &from_unix[..19], "{now} vs {from_unix}");
        assert_eq!(&now[10..11], "T");
    }

    fn data() -> Value {
        json!({"Paris": {"country": "France"}, "York": "UK", "New York": "USA", "": "empty"})
    }

    #[test]
    fn lookup_by_key_is_case_insensitive() {
        let d = data();
        let r = call("lookup", json!({"key": "paris"}), Some(&d)).unwrap();
        assert_eq!(
            r,
            json!({"key": "Paris", "found": true, "value": {"country": "France"}})
        );
        let r = call("lookup", json!({"key": " NEW YORK "}), Some(&d)).unwrap();
        assert_eq!(r["value"], json!("USA"));
        let r = call("lookup", json!("york"), Some(&d)).unwrap();
        assert_eq!(r["value"], json!("UK"));
        let r = call("lookup", json!({"key": "Berlin"}), Some(&d)).unwrap();
        assert_eq!(r, json!({"key": "Berlin", "found": false, "value": null}));
        let d2 = json!({"42": "answer"});
        let r = call("lookup", json!({"key": 42}), Some(&d2)).unwrap();
        assert_eq!(r["value"], json!("answer"));
    }

    #[test]
    fn lookup_by_query_picks_first_contained_key() {
        let d = data();
        let r = call(
            "lookup",
            json!({"query": "What's the weather in PARIS today?"}),
            Some(&d),
        )
        .unwrap();
        assert_eq!(r["key"], json!("Paris"));
        assert_eq!(r["found"], json!(true));
        // First in definition order wins: "York" comes before "New York".
        let r = call("lookup", json!({"query": "flights to new york"}), Some(&d)).unwrap();
        assert_eq!(r["key"], json!("York"));
        let r = call("lookup", json!({"query": "nothing here"}), Some(&d)).unwrap();
        assert_eq!(r, json!({"key": null, "found": false, "value": null}));
        // An empty key falls through to the query.
        let r = call("lookup", json!({"key": "", "query": "paris"}), Some(&d)).unwrap();
        assert_eq!(r["key"], json!("Paris"));
    }

    #[test]
    fn lookup_errors() {
        let e = call("lookup", json!({"key": "x"}), None).unwrap_err();
        assert!(e.contains("no 'data'"), "{e}");
        let e = call("lookup", json!({"key": "x"}), Some(&json!([1]))).unwrap_err();
        assert!(e.contains("no 'data'"), "{e}");
        let e = call("lookup", json!({}), Some(&data())).unwrap_err();
        assert!(e.contains("give 'key'"), "{e}");
    }

    #[test]
    fn unknown_function() {
        let e = call("teleport", json!({}), None).unwrap_err();
        assert!(e.contains("unknown builtin function 'teleport'"), "{e}");
        assert!(e.contains("calculator"), "{e}");
    }
}
