//! Drop-in compatibility with the old cc_ChatServer JSON protocol
//! (`serve --legacy-listen ADDR`), on the same shards and store as the
//! native protocol. See docs/MIGRATING.md for the protocol rules and where
//! ringchat differs from the old server.
//!
//! - [`codec`]: sans-IO splitter, request typing, reply builders.
//! - [`conn`]: the connection: anonymous phase, hand-off to the home shard,
//!   a session that is an ordinary `Conn` whose queued FlatBuffers frames are
//!   translated to JSON at write time.
//! - [`import`]: `ringchat import-legacy`, moving an old MySQL database in.

pub mod codec;
pub mod conn;
pub mod import;
