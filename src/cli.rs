//! Command line (lead).
