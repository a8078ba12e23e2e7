//! The built-in offline model (to be written).
