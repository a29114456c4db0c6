//! The floor `make bench` measures the hook against: a Rust program that
//! does nothing, built with the tool's own release profile (LTO, one
//! codegen unit, panic=abort), so that what is left is the hook's own cost.

fn main() {}
