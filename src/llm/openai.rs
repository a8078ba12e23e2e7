//! OpenAI-compatible provider (to be written).
