//! Schema registry core (work in progress).
