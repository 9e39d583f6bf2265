//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while compiling protos or reading stored schemas.
///
/// Every variant renders as one line. Errors that come from proto source carry the proto
/// path of the file (as imported, e.g. `token_transfer.proto`) and a 1-based line and column;
/// a line of 0 means the compiler gave no position.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file could not be read.
    #[error("cannot read '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input file or a schema is larger than [`crate::MAX_SCHEMA_BYTES`].
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// The proto text does not parse.
    #[error("{}{message}", position(file, *line, *column))]
    Syntax {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    /// An `import` names a file that is in no include directory and is not a well-known type.
    #[error("{}import '{import}' not found", position(file, *line, *column))]
    ImportNotFound {
        /// The importing file.
        file: String,
        line: u32,
        column: u32,
        /// The missing file, as written in the import.
        import: String,
    },
    /// The proto text parses but is not a valid schema (unknown type, duplicate number, ...).
    #[error("{}{message}", position(file, *line, *column))]
    Invalid {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    /// An input file is not under any of the include directories.
    #[error("'{}' is not under any include directory", path.display())]
    NotIncluded { path: PathBuf },
    /// No compiled file declares the requested package.
    #[error("package '{package}' is not declared by any compiled file (found: {})", found.join(", "))]
    UnknownPackage {
        package: String,
        /// The packages that the compiled files do declare, sorted.
        found: Vec<String>,
    },
    /// The package declares no top-level message, so it would have no subject.
    #[error("package '{package}' defines no messages")]
    NoMessages { package: String },
    /// Stored or received descriptor bytes are not a valid `FileDescriptorSet`.
    #[error("the descriptor set of '{what}' cannot be decoded")]
    Decode {
        what: String,
        #[source]
        source: prost::DecodeError,
    },
    /// A descriptor set decodes but its files do not link (missing dependency, bad reference).
    #[error("the descriptor set of '{what}' is not self-contained: {message}")]
    Descriptor { what: String, message: String },
    /// A compatibility mode name that is none of Confluent's.
    #[error("unknown compatibility mode '{text}' (expected one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE)")]
    UnknownMode { text: String },
    /// A schema's descriptor set does not define the message its subject names.
    #[error("the descriptor set of subject '{subject}' does not define that message")]
    MissingMessage { subject: String },
}

/// Renders `file:line:col: ` (or `file: ` without a position, or nothing without a file).
fn position(file: &str, line: u32, column: u32) -> String {
    match (file.is_empty(), line) {
        (true, _) => String::new(),
        (false, 0) => format!("{file}: "),
        (false, _) => format!("{file}:{line}:{column}: "),
    }
}
