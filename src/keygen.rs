//! Key generation command (lead).
