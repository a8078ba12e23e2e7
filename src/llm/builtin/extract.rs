//! Entity extractors: numbers and amounts, e-mails, URLs, dates, places, people, purposes.
//! Each finds the first occurrence in the text;
//! numbers skip the parts of dates and times and carry the currency written next to them.

use super::text::*;

/// A number found in text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FoundNumber {
    pub(super) value: f64,
    /// As written, with its currency when there is one ("45 EUR", "$12.50").
    pub(super) text: String,
    pub(super) currency: Option<String>,
    /// Byte range of `text` in the source.
    pub(super) start: usize,
    pub(super) end: usize,
}

pub(super) const CURRENCY_SYMBOLS: &[(char, &str)] =
    &[('€', "EUR"), ('$', "USD"), ('£', "GBP"), ('¥', "JPY")];
pub(super) const CURRENCY_WORDS: &[(&str, &str)] = &[
    ("eur", "EUR"),
    ("euro", "EUR"),
    ("euros", "EUR"),
    ("usd", "USD"),
    ("dollar", "USD"),
    ("dollars", "USD"),
    ("gbp", "GBP"),
    ("pound", "GBP"),
    ("pounds", "GBP"),
    ("chf", "CHF"),
    ("francs", "CHF"),
    ("jpy", "JPY"),
    ("yen", "JPY"),
    ("cny", "CNY"),
    ("rmb", "CNY"),
    ("yuan", "CNY"),
    ("sek", "SEK"),
    ("nok", "NOK"),
    ("dkk", "DKK"),
    ("inr", "INR"),
    ("rupees", "INR"),
];

/// Numbers in text, skipping the parts of dates (2024-05-03) and times (10:30).
pub(super) fn find_numbers(text: &str) -> Vec<FoundNumber> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // Part of a word like "A4" or "mp3": skip.
        let prev = text[..i].chars().next_back();
        if prev.is_some_and(|p| p.is_alphabetic()) {
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            continue;
        }
        let start = i;
        let mut end = i;
        while end < b.len()
            && (b[end].is_ascii_digit()
                || ((b[end] == b'.' || b[end] == b',')
                    && end + 1 < b.len()
                    && b[end + 1].is_ascii_digit()))
        {
            end += 1;
        }
        let raw = &text[start..end];
        let next = b.get(end).copied();
        let before = if start > 0 {
            b.get(start - 1).copied()
        } else {
            None
        };
        // The number of an identifier like "INV-1001" or "order_12": not an amount.
        if matches!(before, Some(b'-' | b'_')) && start >= 2 && b[start - 2].is_ascii_alphabetic() {
            i = end;
            continue;
        }
        let in_date = matches!(next, Some(b'-' | b'/' | b':'))
            && b.get(end + 1).is_some_and(u8::is_ascii_digit)
            || matches!(before, Some(b'-' | b'/' | b':'))
                && start >= 2
                && b[start - 2].is_ascii_digit();
        i = end;
        if in_date {
            continue;
        }
        let Some(value) = parse_number(raw) else {
            continue;
        };
        let negative = before == Some(b'-')
            && (start < 2 || !text[..start - 1].ends_with(|c: char| c.is_alphanumeric()));
        let value = if negative { -value } else { value };
        let t_start = if negative { start - 1 } else { start };
        out.push(with_currency(text, t_start, end, value));
    }
    out
}

/// The number `value` written at `text[start..end]`, widened to the currency written with it:
/// a symbol right before, or a code, word or symbol right after.
fn with_currency(text: &str, start: usize, end: usize, value: f64) -> FoundNumber {
    let mut t_start = start;
    let mut t_end = end;
    let mut currency = None;
    let lead = text[..t_start].trim_end_matches(' ');
    if let Some(c) = lead.chars().next_back() {
        if let Some((sym, code)) = CURRENCY_SYMBOLS.iter().find(|(s, _)| *s == c) {
            currency = Some(code.to_string());
            t_start = lead.len() - sym.len_utf8();
        }
    }
    if currency.is_none() {
        let after = &text[end..];
        let trimmed = after.trim_start_matches(' ');
        let word: String = trimmed.chars().take_while(|c| c.is_alphabetic()).collect();
        let sym = trimmed.chars().next();
        if let Some((_, code)) = CURRENCY_WORDS
            .iter()
            .find(|(w, _)| word.to_lowercase() == *w)
        {
            currency = Some(code.to_string());
            t_end = end + (after.len() - trimmed.len()) + word.len();
        } else if let Some((s, code)) =
            sym.and_then(|c| CURRENCY_SYMBOLS.iter().find(|(s, _)| *s == c))
        {
            currency = Some(code.to_string());
            t_end = end + (after.len() - trimmed.len()) + s.len_utf8();
        }
    }
    FoundNumber {
        value,
        text: text[t_start..t_end].to_string(),
        currency,
        start: t_start,
        end: t_end,
    }
}

/// "1,200.50" -> 1200.5, "12,5" -> 12.5, "1,200" -> 1200.
pub(super) fn parse_number(raw: &str) -> Option<f64> {
    let norm = if raw.contains('.') && raw.contains(',') {
        raw.replace(',', "")
    } else if let Some(i) = raw.rfind(',') {
        let decimals = raw.len() - i - 1;
        if decimals == 3 && raw.matches(',').count() >= 1 && !raw[..i].is_empty() {
            raw.replace(',', "")
        } else {
            raw.replace(',', ".")
        }
    } else {
        raw.to_string()
    };
    let v: f64 = norm.parse().ok()?;
    v.is_finite().then_some(v)
}

/// The amount of money in text: a number with a currency, else the first number.
pub(super) fn find_amount(text: &str) -> Option<FoundNumber> {
    let nums = find_numbers(text);
    nums.iter()
        .find(|n| n.currency.is_some())
        .or(nums.first())
        .cloned()
}

/// An identifier such as an invoice or order number: a word with letters and digits that is
/// written in capitals or joined by `-`/`_` ("INV-1001", "A1234", "order_12"), not an amount.
pub(super) fn find_identifier(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '"' | '\''))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| {
            let letters: Vec<char> = w.chars().filter(char::is_ascii_alphabetic).collect();
            w.chars().any(|c| c.is_ascii_digit())
                && !letters.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && (w.contains(['-', '_']) || letters.iter().all(char::is_ascii_uppercase))
                && find_numbers(w).iter().all(|n| n.currency.is_none())
        })
        .map(str::to_string)
}

/// Arithmetic to evaluate, from a question: a written expression ("2 * (3 + 4)"), else a
/// percentage of a number ("19% VAT on 1250" -> "1250 * 19 / 100"), else the first number.
pub(super) fn find_expression(text: &str) -> Option<String> {
    let is_expr = |c: char| c.is_ascii_digit() || " .+-*/()^".contains(c);
    let mut best: Option<&str> = None;
    for run in text.split(|c: char| !is_expr(c)) {
        let run = run.trim().trim_end_matches('.');
        let has_op = run
            .trim_start_matches('-')
            .chars()
            .any(|c| "+-*/^".contains(c));
        let digits = run.chars().filter(char::is_ascii_digit).count();
        if has_op && digits >= 2 && best.is_none_or(|b| run.len() > b.len()) {
            best = Some(run);
        }
    }
    if let Some(b) = best {
        return Some(b.to_string());
    }
    let nums = find_numbers(text);
    let percent = nums
        .iter()
        .find(|n| text[n.end..].trim_start().starts_with('%'));
    if let Some(p) = percent {
        if let Some(base) = nums.iter().find(|n| n.start != p.start) {
            return Some(format!("{} * {} / 100", base.value, p.value));
        }
    }
    nums.first().map(|n| n.value.to_string())
}

pub(super) fn find_email(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '(' | ')'))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| {
            let mut parts = w.split('@');
            matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(a), Some(d), None) if !a.is_empty() && d.contains('.') && !d.starts_with('.')
                    && a.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
                    && d.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            )
        })
        .map(str::to_string)
}

pub(super) fn find_url(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| {
            w.trim_end_matches(['.', ',', ')', ';', '!', '?'])
                .to_string()
        })
        .filter(|w| w.len() > "https://".len())
}

/// A date written as YYYY-MM-DD.
pub(super) fn find_date(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(9)).find_map(|i| {
        let w = &b[i..i + 10];
        let shape = w.iter().enumerate().all(|(j, c)| match j {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
        let alone = (i == 0 || !b[i - 1].is_ascii_digit())
            && b.get(i + 10).is_none_or(|c| !c.is_ascii_digit());
        if !(shape && alone) {
            return None;
        }
        let s = std::str::from_utf8(w).ok()?;
        let month: u32 = s[5..7].parse().ok()?;
        let day: u32 = s[8..10].parse().ok()?;
        ((1..=12).contains(&month) && (1..=28).contains(&day)).then(|| s.to_string())
    })
}

/// A place: capitalised words after "in", "at", "to", "from", "near" or "for".
pub(super) fn find_place(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let lw = w.to_lowercase();
        if !["in", "at", "to", "from", "near", "for"].contains(&lw.as_str()) {
            continue;
        }
        let mut place = Vec::new();
        for next in &words[i + 1..] {
            let clean = next.trim_matches(|c: char| !c.is_alphanumeric());
            if clean.chars().next().is_some_and(char::is_uppercase) {
                place.push(clean);
                if next.ends_with(|c: char| !c.is_alphanumeric()) {
                    break;
                }
            } else {
                break;
            }
        }
        if !place.is_empty() {
            return Some(place.join(" "));
        }
    }
    None
}

/// A person's name after "my name is", "I am", "I'm" or "called".
pub(super) fn find_person(text: &str) -> Option<String> {
    // Word by word: byte offsets of a lowercased copy need not match the original's.
    let words: Vec<&str> = text.split_whitespace().collect();
    let lower: Vec<String> = words
        .iter()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                .to_lowercase()
        })
        .collect();
    let markers: [&[&str]; 4] = [&["name", "is"], &["i", "am"], &["i'm"], &["called"]];
    for marker in markers {
        let found = (0..lower.len()).find(|&i| {
            i + marker.len() < lower.len()
                && marker.iter().enumerate().all(|(k, m)| lower[i + k] == *m)
        });
        if let Some(i) = found {
            let name = words[i + marker.len()].trim_matches(|c: char| !c.is_alphanumeric());
            if name.chars().next().is_some_and(char::is_uppercase) {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// What an expense was for: the first sentence without the amount, "I took", or dangling words.
pub(super) fn purpose_of(body: &str, amount: Option<&FoundNumber>) -> String {
    let mut text = body.to_string();
    if let Some(a) = amount {
        if text.get(a.start..a.end) == Some(a.text.as_str()) {
            text.replace_range(a.start..a.end, " ");
        }
    }
    let first = content_sentences(&text)
        .into_iter()
        .next()
        .unwrap_or_default();
    // The amount's place may leave ", ," or " ,": closed up.
    let first = first.replace(" ,", ",").replace(",,", ",");
    let mut words: Vec<&str> = first.split_whitespace().collect();
    if words.len() > 2 && ["i", "we"].contains(&words[0].to_lowercase().as_str()) {
        words.drain(..2);
    }
    const DANGLING: &[&str] = &[
        "for", "of", "at", "costing", "cost", "worth", "paid", "about", "around", "which", "that",
        "and", "with", "was", "is", "it",
    ];
    while let Some(last) = words.last() {
        let clean = last
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        if clean.is_empty() || DANGLING.contains(&clean.as_str()) {
            words.pop();
        } else {
            break;
        }
    }
    let p = limit_words(&words.join(" "), 12);
    let p = p
        .trim_end_matches([',', '.', ';', ':', '!', '?', '-'])
        .trim()
        .to_string();
    // "Hotel in Berlin" -> "hotel in Berlin", but keep "IT equipment".
    let mut cs = p.chars();
    match (cs.next(), cs.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && b.is_lowercase() => {
            a.to_lowercase().chain(p.chars().skip(1)).collect()
        }
        _ => p,
    }
}
