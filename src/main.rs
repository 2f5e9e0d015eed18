//! The `linetokd` binary: parse the command line and dispatch to the library.
fn main() {}
