//! Wire format: generated FlatBuffers code plus the frame codec.
#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, unused_imports, dead_code, non_camel_case_types, non_snake_case)]
#[rustfmt::skip]
mod ringchat_generated;
pub use ringchat_generated::ringchat::wire as fb;
