//! The `requests` target: every request message of the public gRPC API (the admin services,
//! `flowctl.v1.ControlPlaneService` and the legacy `flowctl.ControlPlane`) as tonic decodes it,
//! followed by the checks the service layer runs on the decoded fields before it reads or
//! proposes anything.
//!
//! The service functions themselves need a running node; what they check first is pure and
//! lives in the lower crates (`flowctl-spec`, `flowctl-schema`, `flowctl-state`), so those are
//! called here with the fields each handler hands them. The internal node-to-node services are
//! not public and are not covered.

use flowctl_proto::admin::v1 as admin;
use flowctl_proto::{legacy, v1};
use flowctl_schema::{CompatibilityMode, Compiled};
use flowctl_state::auth::Role;
use flowctl_state::dlq::DlqState;
use flowctl_state::replay::{plan_chunks, ChunkState};
use flowctl_state::ComponentId;
use prost::Message;
use std::fmt::Debug;
use std::str::FromStr;

/// `flowctl-server`'s chunk size when a create request leaves it 0.
const DEFAULT_CHUNK_SIZE: u32 = 64;

/// Decodes `bytes` as `M`; when that works, checks that the message re-encodes and decodes to
/// an equal value, and returns it.
fn decode<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("an encoded message decodes");
    // A `double` NaN is not equal to itself, so only a message equal to itself can be compared.
    #[allow(clippy::eq_op)]
    if m == m {
        assert_eq!(again, m, "decode(encode(m)) != m");
    }
    Some(m)
}

/// Decodes one request type and runs its check.
fn request<M: Message + Default + PartialEq + Debug>(bytes: &[u8], check: fn(M)) {
    if let Some(m) = decode::<M>(bytes) {
        check(m);
    }
}

/// A request whose handler checks nothing before reading state.
fn none<M>(_: M) {}

/// `flowctl_server::components::choose_id`: the first non-empty candidate must be a valid id.
fn choose_id(candidates: &[&str]) {
    if let Some(c) = candidates.iter().find(|c| !c.is_empty()) {
        let _ = ComponentId::parse(c);
    }
}

fn component_id(id: &str) {
    let _ = ComponentId::parse(id);
}

fn apply_pipeline(r: admin::ApplyPipelineRequest) {
    let file = if r.file_name.is_empty() {
        "<request>"
    } else {
        &r.file_name
    };
    if let Ok(p) = flowctl_spec::validate_pipeline(file, &r.yaml) {
        let _ = flowctl_spec::component_changes(None, &p);
    }
}

fn push_schemas(r: admin::PushSchemasRequest) {
    if r.package.is_empty() {
        return;
    }
    let Ok(compiled) = Compiled::from_parts(r.descriptor_set, r.sources.into_iter().collect())
    else {
        return;
    };
    let Ok(candidates) = flowctl_schema::subjects(&compiled, &r.package) else {
        return;
    };
    for c in &candidates {
        let _ = flowctl_schema::check_size(c);
        let _ = flowctl_schema::fingerprint(c);
        let _ = flowctl_schema::check(CompatibilityMode::default(), c, &[]);
    }
    let _ = flowctl_schema::check_deleted_references(&[], &candidates, &[]);
}

fn create_replay(r: admin::CreateReplayRequest) {
    let chunk_size = if r.chunk_size == 0 {
        DEFAULT_CHUNK_SIZE
    } else {
        r.chunk_size
    };
    let _ = plan_chunks(r.from_ledger, r.to_ledger, chunk_size);
}

fn create_token(r: admin::CreateTokenRequest) {
    let _ = flowctl_spec::check_name(&r.name);
    let _ = Role::parse(&r.role);
}

fn chunk_report(r: admin::ChunkReport) {
    component_id(&r.component_id);
    let _ = admin::ChunkReportState::try_from(r.state);
    // The handler keeps the first 4096 characters of a failure.
    let _: String = r.error.chars().take(4096).collect();
}

/// Every public request type, by the selector byte in front of its encoding. Append only:
/// a seed's first byte names its type by its place here.
const REQUESTS: &[fn(&[u8])] = &[
    // flowctl.admin.v1.PipelineService
    |b| request(b, apply_pipeline),
    |b| request(b, none::<admin::GetPipelineRequest>),
    |b| request(b, none::<admin::ListPipelinesRequest>),
    |b| {
        request(b, |r: admin::DeletePipelineRequest| {
            let _ = flowctl_spec::check_name(&r.name);
        })
    },
    // flowctl.admin.v1.ClusterService
    |b| request(b, none::<admin::ClusterStatusRequest>),
    |b| request(b, none::<admin::ClusterMembersRequest>),
    |b| request(b, none::<admin::RemoveMemberRequest>),
    |b| request(b, none::<admin::TransferLeaderRequest>),
    // flowctl.admin.v1.ComponentService
    |b| request(b, none::<admin::ListComponentsRequest>),
    |b| request(b, |r: admin::GetComponentRequest| component_id(&r.id)),
    // flowctl.admin.v1.LogService
    |b| request(b, none::<admin::LogsRequest>),
    // flowctl.admin.v1.SchemaService
    |b| request(b, push_schemas),
    |b| request(b, none::<admin::ListSubjectsRequest>),
    |b| request(b, none::<admin::GetSchemaRequest>),
    |b| {
        request(b, |r: admin::SetCompatibilityRequest| {
            let _ = CompatibilityMode::from_str(&r.mode);
        })
    },
    |b| request(b, none::<admin::GetCompatibilityRequest>),
    |b| request(b, none::<admin::DeleteSchemaRequest>),
    // flowctl.admin.v1.DlqService
    |b| {
        request(b, |r: admin::ListDlqRequest| {
            let _ = DlqState::parse(&r.state);
        })
    },
    |b| request(b, none::<admin::ShowDlqRequest>),
    |b| request(b, none::<admin::DlqActionRequest>),
    // flowctl.admin.v1.ReplayService
    |b| request(b, create_replay),
    |b| request(b, none::<admin::ListReplaysRequest>),
    |b| request(b, none::<admin::GetReplayRequest>),
    |b| {
        request(b, |r: admin::ReplayChunksRequest| {
            let _ = ChunkState::parse(&r.state);
        })
    },
    |b| request(b, none::<admin::ReplayControlRequest>),
    |b| {
        request(b, |r: admin::WatchChunksRequest| {
            component_id(&r.component_id)
        })
    },
    |b| request(b, chunk_report),
    // flowctl.admin.v1.AuthService
    |b| request(b, create_token),
    |b| request(b, none::<admin::ListTokensRequest>),
    |b| request(b, none::<admin::RevokeTokenRequest>),
    |b| request(b, none::<admin::WhoAmIRequest>),
    |b| request(b, none::<admin::SetAuthRequest>),
    // flowctl.admin.v1.AuditService
    |b| request(b, none::<admin::ListAuditRequest>),
    // flowctl.v1.ControlPlaneService
    |b| {
        request(b, |r: v1::RegisterRequest| {
            let requested = r.component.as_ref().map(|c| c.id.as_str()).unwrap_or("");
            choose_id(&[&r.component_id, requested]);
        })
    },
    |b| request(b, |r: v1::UnregisterRequest| component_id(&r.service_id)),
    |b| request(b, none::<v1::DiscoveryRequest>),
    |b| request(b, |r: v1::HeartbeatRequest| component_id(&r.service_id)),
    |b| request(b, none::<v1::ComponentStatusRequest>),
    |b| request(b, none::<v1::ListComponentsRequest>),
    // flowctl.ControlPlane (legacy); ListServices takes google.protobuf.Empty.
    |b| {
        request(b, |r: legacy::ServiceInfo| {
            choose_id(&[&r.component_id, &r.service_id]);
        })
    },
    |b| request(b, |r: legacy::ServiceHeartbeat| component_id(&r.service_id)),
];

/// The first byte picks the request type; the rest is its protobuf encoding.
pub fn requests(data: &[u8]) {
    let Some((kind, bytes)) = crate::select(data, REQUESTS.len()) else {
        return;
    };
    (REQUESTS[kind])(bytes);
}
