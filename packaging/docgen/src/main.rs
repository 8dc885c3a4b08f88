//! Placeholder: generates man pages and completions (see packaging/README).
fn main() {}
