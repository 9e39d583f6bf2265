//! The component-side SDK (in progress).
