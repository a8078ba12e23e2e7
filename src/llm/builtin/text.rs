//! Text utilities: keywords (stop words removed, lightly stemmed), word limits, sentences,
//! quoting.

pub(super) const STOP_WORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "with",
    "about",
    "from",
    "into",
    "onto",
    "that",
    "this",
    "these",
    "those",
    "what",
    "which",
    "when",
    "where",
    "who",
    "whom",
    "why",
    "how",
    "are",
    "was",
    "were",
    "been",
    "being",
    "you",
    "your",
    "yours",
    "our",
    "ours",
    "their",
    "they",
    "them",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "please",
    "have",
    "has",
    "had",
    "not",
    "but",
    "all",
    "any",
    "some",
    "just",
    "also",
    "very",
    "more",
    "most",
    "out",
    "off",
    "over",
    "then",
    "than",
    "there",
    "here",
    "its",
    "let",
    "get",
    "gets",
    "got",
    "does",
    "did",
    "doing",
    "done",
    "make",
    "want",
    "need",
    "like",
    "know",
    "tell",
    "give",
    "use",
    "using",
    "via",
    "per",
    "each",
    "every",
    "question",
    "questions",
    "thing",
    "things",
    "it's",
    "i'm",
    "yes",
    "hello",
    "thank",
    "her",
    "his",
    "him",
    "she",
    "out",
    "now",
];

/// Lowercase words of 3+ characters, stop words removed, lightly stemmed, distinct, in order.
pub(super) fn keywords(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        let w = w.to_lowercase();
        if w.chars().count() < 3 || STOP_WORDS.contains(&w.as_str()) {
            continue;
        }
        let s = stem(&w);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// A crude English stemmer: enough that "invoices", "invoice" and "invoicing" meet.
pub(super) fn stem(w: &str) -> String {
    let mut s = w.to_lowercase();
    let n = s.chars().count();
    if n > 4 && s.ends_with("ies") {
        s.truncate(s.len() - 3);
        s.push('y');
    } else if n > 5 && s.ends_with("ing") {
        s.truncate(s.len() - 3);
    } else if n > 4
        && (s.ends_with("ed")
            || ["sses", "xes", "ches", "shes"]
                .iter()
                .any(|e| s.ends_with(e)))
    {
        s.truncate(s.len() - 2);
    } else if n > 3 && s.ends_with('s') && !s.ends_with("ss") {
        s.truncate(s.len() - 1);
    }
    if s.chars().count() > 4 && s.ends_with('e') {
        s.pop();
    }
    s
}

pub(super) fn overlap(a: &[String], b: &[String]) -> usize {
    a.iter().filter(|w| b.contains(w)).count()
}

/// Lowercase alphanumeric tokens joined by single spaces (`get_weather` -> `get weather`).
pub(super) fn tokens_joined(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A property name's words: `expenseAmount`, `expense_amount` -> [expense, amount].
pub(super) fn name_words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_numeric();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

pub(super) fn singular(name: &str) -> String {
    name.strip_suffix('s').unwrap_or(name).to_string()
}

/// Whitespace collapsed to single spaces, trimmed.
pub(super) fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn limit_words(text: &str, n: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= n {
        words.join(" ")
    } else {
        format!("{}…", words[..n].join(" "))
    }
}

pub(super) fn clip_chars(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(n).collect::<String>())
    }
}

pub(super) fn quote(text: &str) -> String {
    quote_words(text, 25)
}

/// The text's first words, ending in punctuation, for quoting.
pub(super) fn quote_words(text: &str, n: usize) -> String {
    end_sentence(&limit_words(&collapse(text), n))
}

pub(super) fn end_sentence(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() || s.ends_with(['.', '!', '?', '…', ':', '"']) {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

pub(super) fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(super) fn is_instruction(text: &str) -> bool {
    let l = text.to_lowercase();
    [
        "summar",
        "translat",
        "classif",
        "categor",
        "claim",
        "expense",
        "following",
        "the text",
        "this text",
        "this message",
    ]
    .iter()
    .any(|k| l.contains(k))
}

/// The mark the built-in model's pseudo-translations carry before the text (`intents.rs`).
pub(super) const PSEUDO_TRANSLATION: &str = "[Pseudo-translation into ";

/// The text an instruction is about: "Summarize this: <text>" -> "<text>"; of one of this
/// model's pseudo-translations, the text after its mark.
pub(super) fn payload(user: &str) -> &str {
    let t = user.trim();
    if let Some(at) = t.find(PSEUDO_TRANSLATION) {
        if let Some(end) = t[at..].find("] ") {
            let rest = t[at + end + 2..].trim();
            if !rest.is_empty() {
                return rest;
            }
        }
    }
    // A form of "Label: value" lines ("Department: sales\nExpense: a taxi, 42 EUR"): the
    // longest value is the text.
    let labelled: Vec<&str> = t
        .lines()
        .filter_map(|l| {
            let (label, value) = l.split_once(": ")?;
            let short = !label.trim().is_empty() && label.split_whitespace().count() <= 3;
            (short && !value.trim().is_empty()).then_some(value.trim())
        })
        .collect();
    if labelled.len() >= 2 && labelled.len() == t.lines().filter(|l| !l.trim().is_empty()).count() {
        if let Some(v) = labelled.iter().max_by_key(|v| v.len()) {
            return v;
        }
    }
    if let Some((first, rest)) = t.split_once('\n') {
        let first = first.trim();
        if (first.ends_with(':') || is_instruction(first)) && !rest.trim().is_empty() {
            return rest.trim();
        }
    }
    if let Some(i) = t.find(": ") {
        let rest = t[i + 2..].trim();
        if i <= 80 && !rest.is_empty() {
            return rest;
        }
    }
    t
}

/// Sentences of `text`, without a leading instruction sentence ("Please summarize.").
pub(super) fn content_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            if !cur.trim().is_empty() {
                out.push(collapse(&cur));
            }
            cur.clear();
            continue;
        }
        cur.push(c);
        let next = chars.get(i + 1);
        if matches!(c, '.' | '!' | '?') && next.is_none_or(|n| n.is_whitespace()) {
            if !cur.trim().is_empty() {
                out.push(collapse(&cur));
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(collapse(&cur));
    }
    if out.len() > 1 && is_instruction(&out[0]) && out[0].split_whitespace().count() <= 8 {
        out.remove(0);
    }
    out
}

pub(super) fn title_of(body: &str) -> String {
    let first = content_sentences(body)
        .into_iter()
        .next()
        .unwrap_or_default();
    let t = limit_words(&first, 8);
    let t = t
        .trim_end_matches(['.', '!', '?', ',', ';', ':'])
        .to_string();
    capitalize(&t)
}

/// Up to `n` content words of `text`, as written (lowercased), first seen first, one per stem.
pub(super) fn key_words(text: &str, n: usize) -> Vec<String> {
    let mut stems: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric() && c != '-') {
        let w = w.trim_matches('-').to_lowercase();
        if w.chars().count() < 3 || STOP_WORDS.contains(&w.as_str()) || out.len() >= n {
            continue;
        }
        let s = stem(&w);
        if !stems.contains(&s) {
            stems.push(s);
            out.push(w);
        }
    }
    out
}
