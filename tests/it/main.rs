//! Integration tests, built as one binary. One module per area.

mod store;
