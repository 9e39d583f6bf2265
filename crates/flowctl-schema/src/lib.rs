//! Schema registry core: compiles `.proto` files, splits a package into subjects, gives each
//! schema a normalized fingerprint, and decides whether a new version is wire-compatible with
//! the versions before it.
//!
//! This crate is pure: it reads the files it is asked to compile and does nothing else. It
//! does not store schemas, assign version numbers or global ids, or know about Raft; the
//! registry's state machine does that with what this crate returns.
//!
//! ```text
//!  client (flowctl schemas push)              server (registry)
//!  compile(files, -I dirs) ──Compiled──┐
//!                                      ├─ encoded set + sources ──▶ Compiled::from_parts
//!  subjects(&compiled, pkg)  ◀─────────┘                             subjects(&compiled, pkg)
//!                                                                   per subject:
//!                                                                     fingerprint → same id?
//!                                                                     check(mode, new, history)
//!                                                                   check_deleted_references(..)
//! ```
//!
//! # API
//!
//! * [`compile`]`(&[PathBuf], &[PathBuf]) -> Result<Compiled, Error>`: protox with source info
//!   and the well-known types built in. [`Compiled::from_parts`] rebuilds one from the bytes a
//!   client sends.
//! * [`subjects`]`(&Compiled, package) -> Result<Vec<SubjectSchema>, Error>`: one
//!   [`SubjectSchema`] per top-level message; nested messages and enums belong to their parent.
//! * [`fingerprint`]`(&SubjectSchema) -> Result<String, Error>`: hex SHA-256 of the normalized
//!   schema (see its docs for what normalization ignores).
//! * [`check`]`(CompatibilityMode, &SubjectSchema, &[(u32, &SubjectSchema)]) -> Result<Vec<Violation>, Error>`
//!   and [`check_deleted_references`] for subjects removed while others still use them.
//! * [`diff`]`(&SubjectSchema, &SubjectSchema) -> Result<Vec<Change>, Error>`.
//! * [`descriptor_json`]`(&SubjectSchema) -> Result<serde_json::Value, Error>` for `-o json`.
//! * [`MAX_SCHEMA_BYTES`] and [`check_size`].
//!
//! # Compatibility semantics
//!
//! BACKWARD: the new schema must read data written with the old one. FORWARD: the old schema
//! must read data written with the new one. FULL: both. `_TRANSITIVE` compares with every
//! live version instead of the latest. NONE checks nothing. Structural rules (deleting an
//! unreserved field or enum number, dropping a reservation, oneof moves, changes to another
//! wire type or another message/enum type) apply in every other mode; directional rules
//! (lossy numeric changes, `string`/`bytes`/message swaps, singular ↔ repeated) apply in the
//! direction(s) the mode asks for. See [`Rule`] for the codes.
//!
//! # Invariants
//!
//! * A [`SubjectSchema`] is self-contained: its descriptor set decodes alone.
//! * Equal normalized schemas have equal fingerprints; comments, whitespace, declaration
//!   order and file names do not change a fingerprint.
//! * Every error and violation renders as one line starting with `file:line:col` where the
//!   source gives a position.

mod compat;
mod compile;
mod diff;
mod error;
mod subject;

pub use compat::{check, check_deleted_references, CompatibilityMode, Rule, Violation};
pub use compile::{compile, Compiled};
pub use diff::{diff, Change, ChangeKind};
pub use error::Error;
pub use subject::{check_size, decode_json, descriptor_json, fingerprint, subjects, SubjectSchema};

/// The largest schema accepted: an input file, a push, or one subject's descriptors plus
/// source text. Real schemas are a few KiB; this bounds what one push can make the
/// replicated log carry.
pub const MAX_SCHEMA_BYTES: usize = 1024 * 1024;

#[cfg(test)]
mod testing;
