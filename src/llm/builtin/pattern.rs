//! Strings for a schema's `pattern`: the generated text when it already matches, else the
//! shortest simple string the regular expression describes.
//!
//! The pattern is read with `regex-syntax` (the syntax JSON Schema's ECMA-262 patterns share
//! with Rust's): a literal is written out, a class gives one of its characters (a letter or a
//! digit when it has one), a repetition its minimum count (capped at [`MAX_REPEAT`]), an
//! alternation its first branch, and anchors nothing. Whether a string matches is decided by
//! [`crate::schema`], like every other check; a pattern that cannot be read keeps the text.

use regex_syntax::hir::{Class, Hir, HirKind};
use serde_json::{json, Value};

/// The most copies of a repeated part written.
pub(super) const MAX_REPEAT: u32 = 64;

/// `text` if it matches `pattern`, else a string made from the pattern when that one matches.
pub(super) fn fit(text: String, pattern: &str) -> String {
    let Ok(check) = crate::schema::compiled(&json!({"pattern": pattern})) else {
        return text;
    };
    if check.is_valid(&Value::String(text.clone())) {
        return text;
    }
    match sample(pattern) {
        Some(s) if check.is_valid(&Value::String(s.clone())) => s,
        _ => text,
    }
}

/// The shortest simple string `pattern` describes.
pub(super) fn sample(pattern: &str) -> Option<String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    let mut out = String::new();
    write(&hir, &mut out)?;
    Some(out)
}

fn write(h: &Hir, out: &mut String) -> Option<()> {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => out.push_str(std::str::from_utf8(&l.0).ok()?),
        HirKind::Class(Class::Unicode(c)) => {
            let nice = ['a', 'A', '0', '_', '-', ' '];
            let has = |ch: char| c.ranges().iter().any(|r| r.start() <= ch && ch <= r.end());
            let ch = match nice.iter().find(|n| has(**n)) {
                Some(n) => *n,
                None => c.ranges().first()?.start(),
            };
            out.push(ch);
        }
        HirKind::Class(Class::Bytes(c)) => {
            let b = c.ranges().first()?.start();
            out.push(char::from(b).is_ascii().then_some(char::from(b))?);
        }
        HirKind::Repetition(r) => {
            for _ in 0..r.min.min(MAX_REPEAT) {
                write(&r.sub, out)?;
            }
        }
        HirKind::Capture(c) => write(&c.sub, out)?,
        HirKind::Concat(parts) => {
            for p in parts {
                write(p, out)?;
            }
        }
        HirKind::Alternation(alts) => write(alts.first()?, out)?,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_their_patterns() {
        for (p, want) in [
            ("^[A-Z]{3}-[0-9]{2}$", "AAA-00"),
            (r"^\d+(\.\d{2})?$", "0"),
            ("^(EUR|USD)$", "EUR"),
            ("^x*$", ""),
            (r"^[^@\s]+@example\.org$", "a@example.org"),
        ] {
            assert_eq!(sample(p).as_deref(), Some(want), "{p}");
        }
        assert_eq!(fit("ABC-12".into(), "^[A-Z]{3}-[0-9]{2}$"), "ABC-12");
        assert_eq!(fit("taxi".into(), "^[A-Z]{3}-[0-9]{2}$"), "AAA-00");
        assert_eq!(fit("taxi".into(), "(unclosed"), "taxi");
    }
}
