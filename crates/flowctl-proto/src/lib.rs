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

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("flowctl.admin.v1");
    }
}

/// The encoded `FileDescriptorSet` of every file in `/proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flowctl_descriptor.bin"));
