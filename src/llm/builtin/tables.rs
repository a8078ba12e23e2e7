//! The word tables the intents read: languages, topics with the words that suggest them (the
//! first name of a topic is the label answered), neutral labels, expense words. Order matters:
//! the first best match wins.

pub(super) const LANGUAGES: &[&str] = &[
    "english",
    "french",
    "german",
    "spanish",
    "italian",
    "portuguese",
    "dutch",
    "swedish",
    "norwegian",
    "danish",
    "finnish",
    "polish",
    "czech",
    "greek",
    "turkish",
    "russian",
    "ukrainian",
    "arabic",
    "hebrew",
    "hindi",
    "chinese",
    "japanese",
    "korean",
    "vietnamese",
    "indonesian",
];

/// Categories with the words that suggest them; the first name is the one answered.
pub(super) const TOPICS: &[(&[&str], &[&str])] = &[
    (
        &["billing", "payment", "finance", "invoice", "money"],
        &[
            "invoice",
            "refund",
            "payment",
            "charge",
            "bill",
            "billing",
            "price",
            "subscription",
            "money",
            "paid",
            "pay",
            "cost",
            "card",
            "receipt",
            "fee",
        ],
    ),
    (
        &["technical", "tech", "support", "bug", "software"],
        &[
            "error", "bug", "crash", "broken", "login", "password", "install", "server", "app",
            "website", "slow", "fail", "update", "reset", "working", "screen",
        ],
    ),
    (
        &["shipping", "delivery", "logistics", "order"],
        &[
            "delivery", "package", "ship", "shipping", "parcel", "tracking", "arrive", "courier",
            "order", "shipment",
        ],
    ),
    (
        &["account", "profile", "user"],
        &[
            "account", "profile", "email", "username", "signup", "register", "delete",
        ],
    ),
    (
        &["complaint", "negative", "angry"],
        &[
            "angry",
            "terrible",
            "awful",
            "bad",
            "unacceptable",
            "disappointed",
            "worst",
            "hate",
            "poor",
            "complain",
            "annoyed",
        ],
    ),
    (
        &["praise", "positive", "compliment", "happy"],
        &[
            "thanks",
            "thank",
            "great",
            "love",
            "excellent",
            "awesome",
            "happy",
            "good",
            "amazing",
            "wonderful",
            "nice",
        ],
    ),
    (
        &["sales", "pricing", "purchase"],
        &[
            "buy", "purchase", "quote", "discount", "plan", "pricing", "demo", "offer",
        ],
    ),
    (
        &["travel", "transport"],
        &[
            "taxi", "flight", "hotel", "train", "airport", "trip", "travel", "uber", "bus",
        ],
    ),
    (
        &["food", "meals"],
        &[
            "lunch",
            "dinner",
            "meal",
            "restaurant",
            "breakfast",
            "coffee",
            "food",
        ],
    ),
];

pub(super) const NEUTRAL_LABELS: &[&str] = &[
    "other",
    "general",
    "misc",
    "miscellaneous",
    "neutral",
    "unknown",
    "none",
];

/// Words that say a text describes something bought or used.
pub(super) const EXPENSE_WORDS: &[&str] = &[
    "took",
    "paid",
    "bought",
    "spent",
    "booked",
    "stayed",
    "rented",
    "ordered",
    "had",
    "taxi",
    "flight",
    "hotel",
    "train",
    "ticket",
    "lunch",
    "dinner",
    "breakfast",
    "meal",
    "parking",
    "fuel",
    "mileage",
    "receipt",
    "conference",
    "course",
    "equipment",
    "laptop",
    "uber",
    "bus",
];
