//! The text intents: summary, pseudo-translation, classification, expense-claim draft and the
//! generic reply. Each is a pure function of the text it is given; the cue that selects one is
//! read in `plan.rs`, the words they match in `tables.rs`.

use super::conversation::Conversation;
use super::extract::*;
use super::tables::*;
use super::text::*;

pub(super) fn summarize(body: &str) -> String {
    let sents = content_sentences(body);
    let Some(first) = sents.first() else {
        return "There is nothing to summarize yet: send me the text.".to_string();
    };
    let mut s = first.clone();
    if s.split_whitespace().count() < 8 {
        if let Some(second) = sents.get(1) {
            s = format!("{s} {second}");
        }
    }
    format!("In short: {}", end_sentence(&limit_words(&s, 30)))
}

pub(super) fn pseudo_translate(cue: &str, body: &str) -> String {
    let lang = LANGUAGES
        .iter()
        .filter_map(|l| cue.find(l).map(|at| (at, *l)))
        .min()
        .map_or_else(
            || "the requested language".to_string(),
            |(_, l)| capitalize(l),
        );
    let text = content_sentences(body).join(" ");
    if text.is_empty() {
        return format!(
            "I am the built-in offline model and cannot translate for real. Send me the text and I will mark it as a pseudo-translation into {lang}."
        );
    }
    format!(
        "I am the built-in offline model and cannot translate for real, so here is the text unchanged. {PSEUDO_TRANSLATION}{lang}] {}",
        limit_words(&text, 60)
    )
}

pub(super) fn classify(system: &str, user: &str) -> String {
    let body = payload(user);
    let text_kw = keywords(body);
    let labels = candidate_labels(system).or_else(|| {
        // The labels may be in the user turn, before the text to classify.
        let head = user.strip_suffix(body).unwrap_or("");
        candidate_labels(head)
    });
    // A sentiment task without its own labels answers positive, negative or neutral.
    let labels = labels.or_else(|| {
        let cue = format!("{system}\n{user}").to_lowercase();
        cue.contains("sentiment")
            .then(|| vec!["positive".into(), "negative".into(), "neutral".into()])
    });
    match labels {
        Some(labels) => {
            let mut best: Option<(usize, usize)> = None;
            for (i, l) in labels.iter().enumerate() {
                let score = overlap(&label_keywords(l), &text_kw);
                if score > 0 && best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
            match best {
                Some((i, _)) => labels[i].clone(),
                None => labels
                    .iter()
                    .find(|l| NEUTRAL_LABELS.contains(&l.as_str()))
                    .unwrap_or(&labels[0])
                    .clone(),
            }
        }
        None => {
            let mut best: Option<(usize, usize)> = None;
            for (i, (_, words)) in TOPICS.iter().enumerate() {
                let kw: Vec<String> = words.iter().map(|w| stem(w)).collect();
                let score = overlap(&kw, &text_kw);
                if score > 0 && best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
            match best {
                Some((i, _)) => TOPICS[i].0[0].to_string(),
                None => "general".to_string(),
            }
        }
    }
}

/// A label's own words plus the words of topics it names.
pub(super) fn label_keywords(label: &str) -> Vec<String> {
    let mut kw = keywords(label);
    for (names, words) in TOPICS {
        let named = keywords(label).iter().any(|w| {
            names.iter().any(|n| {
                let n = stem(n);
                n == *w || (w.len() >= 4 && n.starts_with(w.as_str()))
            })
        });
        if named {
            for w in words.iter() {
                let s = stem(w);
                if !kw.contains(&s) {
                    kw.push(s);
                }
            }
        }
    }
    kw
}

/// Labels listed in an instruction: "Classify into one of: billing, tech, other".
pub(super) fn candidate_labels(text: &str) -> Option<Vec<String>> {
    for sentence in text.split(['\n', '.', '!', '?']) {
        let lower = sentence.to_lowercase();
        let Some(kw_at) = ["categor", "classif", "label", "one of", "sentiment"]
            .iter()
            .filter_map(|k| lower.find(k))
            .min()
        else {
            continue;
        };
        let tail = &lower[kw_at..];
        let list = if let Some(i) = tail.find(':') {
            &tail[i + 1..]
        } else if let Some(i) = tail.rfind(" one of ") {
            &tail[i + 8..]
        } else if let Some(i) = tail.rfind(" into ") {
            &tail[i + 6..]
        } else if let Some(i) = tail.rfind(" as ") {
            &tail[i + 4..]
        } else {
            continue;
        };
        let list = list.replace(" or ", ",").replace(" and ", ",");
        let labels: Vec<String> = list
            .split([',', '/', '|', ';'])
            .map(|l| {
                let l = l.trim().trim_matches(|c: char| !c.is_alphanumeric());
                let l = ["a ", "an ", "the "]
                    .iter()
                    .find_map(|a| l.strip_prefix(a))
                    .unwrap_or(l);
                l.trim().to_string()
            })
            .filter(|l| !l.is_empty() && l.split_whitespace().count() <= 3 && l.len() <= 30)
            .collect();
        if labels.len() >= 2 {
            return Some(labels);
        }
    }
    None
}

pub(super) fn claim_draft(body: &str) -> String {
    let amount = find_amount(body);
    let lower = tokens_joined(body);
    let described = amount.is_some() || lower.split(' ').any(|w| EXPENSE_WORDS.contains(&w));
    if !described {
        return "To draft an expense claim I need what you spent and on what, for example \"Taxi to the airport, 45 EUR\".".to_string();
    }
    let purpose = purpose_of(body, amount.as_ref());
    match (amount, purpose.is_empty()) {
        (Some(a), false) => format!(
            "Expense claim draft: {} for {purpose}. Please check the details and attach the receipt.",
            a.text
        ),
        (Some(a), true) => format!(
            "Expense claim draft: {}. What was the expense for?",
            a.text
        ),
        (None, false) => format!(
            "Expense claim draft for {purpose}. The amount is missing: how much did you spend?"
        ),
        (None, true) => {
            "I can draft an expense claim: tell me what you spent, and on what.".to_string()
        }
    }
}

pub(super) fn generic_reply(conv: &Conversation) -> String {
    let user = collapse(conv.last_user);
    let mut s = if user.is_empty() {
        "I did not receive a message. What would you like to talk about?".to_string()
    } else if is_greeting(&user) {
        "Hello! I am Parley's built-in offline model. What can I do for you?".to_string()
    } else if user.ends_with('?') {
        format!(
            "You asked: \"{}\" I am Parley's built-in offline model, so I can only restate what you write; configure a real model in config.toml for real answers.",
            quote(&user)
        )
    } else {
        format!(
            "You said: \"{}\" I am Parley's built-in offline model, so I answer by rules, the same way every time.",
            quote(&user)
        )
    };
    if let Some(prev) = conv
        .earlier_user
        .iter()
        .rev()
        .find(|p| !p.trim().is_empty())
    {
        s.push_str(&format!(" Earlier you said: \"{}\"", quote(prev)));
    }
    s
}

pub(super) fn is_greeting(user: &str) -> bool {
    let first = user
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_lowercase();
    user.split_whitespace().count() <= 4
        && [
            "hi",
            "hello",
            "hey",
            "hallo",
            "greetings",
            "morning",
            "good",
        ]
        .contains(&first.as_str())
}

/// The opinion of a text: positive, negative or neutral, by its opinion words ("not" before a
/// word turns it around).
pub(super) fn sentiment(text: &str) -> &'static str {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let (mut pos, mut neg) = (0, 0);
    for (i, w) in words.iter().enumerate() {
        let negated = i > 0
            && ["not", "never", "no", "isn't", "don't", "wasn't"].contains(&words[i - 1].as_str());
        let (p, n) = (
            POSITIVE_WORDS.contains(&w.as_str()),
            NEGATIVE_WORDS.contains(&w.as_str()),
        );
        match (p, n, negated) {
            (true, _, false) | (_, true, true) => pos += 1,
            (true, _, true) | (_, true, false) => neg += 1,
            _ => {}
        }
    }
    match pos.cmp(&neg) {
        std::cmp::Ordering::Greater => "positive",
        std::cmp::Ordering::Less => "negative",
        std::cmp::Ordering::Equal => "neutral",
    }
}

/// Whether a text looks like spam or an advertisement: two or more signs (selling words,
/// links, "dot com"), or a link at all.
pub(super) fn is_spam(text: &str) -> bool {
    let lower = text.to_lowercase();
    let signs = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| SPAM_WORDS.contains(w))
        .count();
    signs >= 2 || find_url(text).is_some() || lower.contains("www.")
}

/// Why a moderation verdict: spam, or an honest review of the given opinion.
pub(super) fn moderation_reason(text: &str) -> String {
    if is_spam(text) {
        "It advertises a product or site (spam), not a review.".to_string()
    } else {
        match sentiment(text) {
            "positive" => "An honest positive review of the product.".to_string(),
            "negative" => {
                "An honest negative review: it describes a problem with the product.".to_string()
            }
            _ => "An honest review without a clear opinion.".to_string(),
        }
    }
}
