//! Wire format: generated FlatBuffers code plus the frame codec.
//!
//! The generated code is checked in (`src/wire/ringchat_generated.rs`) so a
//! fresh `cargo build` needs no `flatc`; `scripts/gen-flatbuffers.sh`
//! regenerates it and `--check` (run by `.ci/run` when flatc is present)
//! fails if it is stale. See docs/PROTOCOL.md.

#[allow(
    clippy::all,
    unsafe_op_in_unsafe_fn,
    mismatched_lifetime_syntaxes,
    unused_imports,
    dead_code,
    non_camel_case_types,
    non_snake_case
)]
#[rustfmt::skip]
mod ringchat_generated;

pub mod enc;
pub mod frame;
pub mod pool;
pub mod ws;

pub use enc::{Enc, PROTOCOL_VERSION};
pub use frame::{FrameBuf, FrameError};
pub use ringchat_generated::ringchat::wire as fb;

/// Verifier limits for one frame: generous for real messages, tight enough
/// that a hostile buffer cannot make verification expensive.
pub fn verify_opts() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        max_tables: 100_000,
        max_apparent_size: 1 << 24,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies one whole frame (length prefix included, as returned by
/// [`FrameBuf::next_frame`]) and returns the envelope view over it.
pub fn decode(frame: &[u8]) -> Result<fb::Envelope<'_>, flatbuffers::InvalidFlatbuffer> {
    fb::size_prefixed_root_as_envelope_with_opts(&verify_opts(), frame)
}

/// Human-readable name of an error code, for clients and logs.
pub fn error_name(code: fb::ErrorCode) -> &'static str {
    code.variant_name().unwrap_or("Unknown")
}
