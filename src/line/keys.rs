//! Assertion signing keys (filled in on main by the lead).
