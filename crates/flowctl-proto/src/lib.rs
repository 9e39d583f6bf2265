//! Code generated from `/proto`: the public admin API and the internal node-to-node service.
//!
//! This crate is only wire types. Invariant: nothing here is ever a Raft command or part of
//! the replicated state (see `flowctl-state`), so the API can evolve without rewriting the log.

#![allow(clippy::all, missing_docs, rust_2018_idioms)]

pub mod internal {
    pub mod v1 {
        tonic::include_proto!("flowctl.internal.v1");
    }
}

/// The original Go control plane's legacy API (package `flowctl`), wire-compatible.
pub mod legacy {
    tonic::include_proto!("flowctl");
}

/// The original Go control plane's current API (package `flowctl.v1`), wire-compatible.
pub mod v1 {
    tonic::include_proto!("flowctl.v1");
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("flowctl.admin.v1");
    }
}

/// The encoded `FileDescriptorSet` of every file in `/proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flowctl_descriptor.bin"));
