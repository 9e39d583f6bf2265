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

    /// The `ComponentInfo.metadata` key under which a component names its HTTP health URL:
    /// the v1 API has no field for it (the flowctl agent sets it; the server reads it).
    pub const HEALTH_ENDPOINT_METADATA_KEY: &str = "health_endpoint";
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("flowctl.admin.v1");
    }
}

/// The encoded `FileDescriptorSet` of every file in `/proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flowctl_descriptor.bin"));

/// Retry pacing shared by the CLI's client, the agent and the nodes.
pub mod retry {
    use std::time::Duration;

    /// `d` scaled by a random factor in `1 ± spread` (`spread` in 0..=1), so that many
    /// clients retrying or heartbeating at once spread out instead of arriving together.
    pub fn jitter(d: Duration, spread: f64) -> Duration {
        let spread = spread.clamp(0.0, 1.0);
        let factor = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
        d.mul_f64(factor.max(0.0))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn jitter_stays_within_its_spread() {
            let d = Duration::from_secs(10);
            for _ in 0..1000 {
                let j = jitter(d, 0.1);
                assert!(
                    j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
                    "{j:?}"
                );
            }
            assert_eq!(jitter(d, 0.0), d);
        }
    }
}

/// Credentials on outgoing calls: a tonic interceptor that adds `authorization: Bearer <token>`
/// to every request when it has a token, and nothing when it has none. Clients wrap their
/// channels in it (`InterceptedService<Channel, Bearer>`).
pub mod auth {
    use tonic::metadata::AsciiMetadataValue;

    /// The header that carries a bearer token.
    pub const AUTHORIZATION: &str = "authorization";

    /// Every node-to-node call names its sender's node id in this header...
    pub const PEER_NODE_ID: &str = "x-flowctl-node-id";
    /// ...and the sender's cluster id in this one (empty until it has joined one).
    pub const PEER_CLUSTER_ID: &str = "x-flowctl-cluster-id";

    /// A client's id for one logical operation, the same on every retry of it, so that a
    /// retried write answers what its first copy answered.
    pub const REQUEST_ID: &str = "x-flowctl-request-id";
    /// Longest [`REQUEST_ID`] a node accepts.
    pub const MAX_REQUEST_ID_LEN: usize = 64;

    /// Whether `id` may be a [`REQUEST_ID`]: 1 to [`MAX_REQUEST_ID_LEN`] ASCII letters,
    /// digits, `-` or `_`.
    pub fn valid_request_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_REQUEST_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    /// Credentials (a bearer token, or none) and, per logical operation, a request id.
    #[derive(Clone, Default)]
    pub struct Bearer(Option<AsciiMetadataValue>, Option<AsciiMetadataValue>);

    impl std::fmt::Debug for Bearer {
        // Never prints the token.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0.is_some() {
                "Bearer(<token>)"
            } else {
                "Bearer(none)"
            })
        }
    }

    impl Bearer {
        /// None for no credentials. A token that cannot be a header value (control characters,
        /// say) is an error naming no part of it.
        pub fn new(token: Option<&str>) -> Result<Self, String> {
            match token.map(str::trim).filter(|t| !t.is_empty()) {
                None => Ok(Bearer(None, None)),
                Some(t) => format!("Bearer {t}")
                    .parse::<AsciiMetadataValue>()
                    .map(|v| Bearer(Some(v), None))
                    .map_err(|_| "the token has characters that cannot be sent in a header".into()),
            }
        }
    }

    impl Bearer {
        /// These credentials with `id` as the [`REQUEST_ID`] of every call (one logical
        /// operation and its retries). An id that [`valid_request_id`] refuses is not sent.
        pub fn with_request_id(mut self, id: &str) -> Self {
            self.1 = valid_request_id(id)
                .then(|| id.parse::<AsciiMetadataValue>().ok())
                .flatten();
            self
        }
    }

    impl tonic::service::Interceptor for Bearer {
        fn call(
            &mut self,
            mut req: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(v) = &self.0 {
                req.metadata_mut().insert(AUTHORIZATION, v.clone());
            }
            if let Some(v) = &self.1 {
                req.metadata_mut().insert(REQUEST_ID, v.clone());
            }
            Ok(req)
        }
    }

    /// A channel whose calls carry [`Bearer`] credentials.
    pub type AuthChannel =
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

    /// `ch` with `bearer`'s credentials on every call.
    pub fn with_bearer(ch: tonic::transport::Channel, bearer: Bearer) -> AuthChannel {
        tonic::service::interceptor::InterceptedService::new(ch, bearer)
    }
}
