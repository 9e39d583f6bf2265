//! Thin handlers for the original control plane's APIs (legacy `flowctl.ControlPlane` and
//! current `flowctl.v1.ControlPlaneService`) and for the CLI's `ComponentService`: decode,
//! call `components`, encode.

use crate::auth::check_component_scope;
use crate::components::{self, ComponentView};
use crate::liveness::{Beat, LivenessHandle};
use crate::pipelines::Consistency;
use flowctl_proto::admin::v1 as apb;
use flowctl_proto::{legacy, v1};
use flowctl_raft::RaftNode;
use flowctl_state::components::{Api, ComponentKind, ComponentSpec};
use flowctl_state::ComponentId;
use std::collections::HashMap;
use tonic::{Request, Response, Status};

use flowctl_proto::v1::HEALTH_ENDPOINT_METADATA_KEY;

#[derive(Clone)]
pub struct ComponentApis {
    pub node: RaftNode,
    pub live: LivenessHandle,
    pub data: std::sync::Arc<components::DataPlane>,
}

fn ts(ms: u64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn kind_from_legacy(t: i32) -> ComponentKind {
    match legacy::ServiceType::try_from(t) {
        Ok(legacy::ServiceType::Source) => ComponentKind::Source,
        Ok(legacy::ServiceType::Processor) => ComponentKind::Processor,
        Ok(legacy::ServiceType::Sink) => ComponentKind::Sink,
        Ok(legacy::ServiceType::Pipeline) => ComponentKind::Pipeline,
        _ => ComponentKind::Unspecified,
    }
}

fn kind_to_legacy(k: ComponentKind) -> legacy::ServiceType {
    match k {
        ComponentKind::Source => legacy::ServiceType::Source,
        ComponentKind::Processor => legacy::ServiceType::Processor,
        ComponentKind::Sink => legacy::ServiceType::Sink,
        ComponentKind::Pipeline => legacy::ServiceType::Pipeline,
        ComponentKind::Unspecified => legacy::ServiceType::Unspecified,
    }
}

fn kind_from_v1(t: i32) -> ComponentKind {
    match v1::ComponentType::try_from(t) {
        Ok(v1::ComponentType::Source) => ComponentKind::Source,
        Ok(v1::ComponentType::Processor) => ComponentKind::Processor,
        Ok(v1::ComponentType::Consumer) => ComponentKind::Sink,
        _ => ComponentKind::Unspecified,
    }
}

fn kind_to_v1(k: ComponentKind) -> v1::ComponentType {
    match k {
        ComponentKind::Source => v1::ComponentType::Source,
        ComponentKind::Processor => v1::ComponentType::Processor,
        ComponentKind::Sink => v1::ComponentType::Consumer,
        _ => v1::ComponentType::Unspecified,
    }
}

/// The v1 status: the replicated UNHEALTHY wins; otherwise what the component reported, with
/// UNKNOWN (what the Go SDK always sends) shown as HEALTHY.
fn v1_status(view: &ComponentView) -> v1::HealthStatus {
    if !view.record.healthy {
        return v1::HealthStatus::Unhealthy;
    }
    match view
        .live
        .as_ref()
        .map(|l| v1::HealthStatus::try_from(l.status))
    {
        Some(Ok(
            s @ (v1::HealthStatus::Starting
            | v1::HealthStatus::Degraded
            | v1::HealthStatus::Stopping),
        )) => s,
        _ => v1::HealthStatus::Healthy,
    }
}

fn info_v1(spec: &ComponentSpec) -> v1::ComponentInfo {
    v1::ComponentInfo {
        id: spec.id.0.clone(),
        name: spec.name.clone(),
        description: spec.description.clone(),
        version: spec.version.clone(),
        r#type: kind_to_v1(spec.kind) as i32,
        input_event_types: spec.input_event_types.clone(),
        output_event_types: spec.output_event_types.clone(),
        endpoint: spec.endpoint.clone(),
        metadata: spec.metadata.clone().into_iter().collect(),
    }
}

fn status_v1(view: &ComponentView) -> v1::ComponentStatusResponse {
    v1::ComponentStatusResponse {
        component: Some(info_v1(&view.record.spec)),
        status: v1_status(view) as i32,
        last_heartbeat: view.live.as_ref().and_then(|l| ts(l.last_heartbeat_ms)),
        metrics: view
            .live
            .as_ref()
            .map(|l| l.metrics.clone().into_iter().collect())
            .unwrap_or_default(),
        registered_at: ts(view.record.registered_at_ms),
    }
}

fn status_legacy(view: &ComponentView) -> legacy::ServiceStatus {
    let spec = &view.record.spec;
    legacy::ServiceStatus {
        service_id: spec.id.0.clone(),
        service_type: kind_to_legacy(spec.kind) as i32,
        is_healthy: view.record.healthy,
        last_heartbeat: view.live.as_ref().and_then(|l| ts(l.last_heartbeat_ms)),
        metrics: view
            .live
            .as_ref()
            .map(|l| {
                l.metrics
                    .iter()
                    .filter_map(|(k, v)| v.parse::<f64>().ok().map(|f| (k.clone(), f)))
                    .collect()
            })
            .unwrap_or_default(),
        component_id: spec
            .metadata
            .get("component_id")
            .cloned()
            .unwrap_or_else(|| spec.id.0.clone()),
    }
}

#[tonic::async_trait]
impl legacy::control_plane_server::ControlPlane for ComponentApis {
    async fn register(
        &self,
        req: Request<legacy::ServiceInfo>,
    ) -> Result<Response<legacy::RegistrationAck>, Status> {
        let info = req.get_ref();
        let id = components::choose_id(&[&info.component_id, &info.service_id])?;
        check_component_scope(&req, &id.0)?;
        let info = req.into_inner();
        let spec = ComponentSpec {
            id,
            api: Api::Legacy,
            kind: kind_from_legacy(info.service_type),
            name: String::new(),
            description: String::new(),
            version: String::new(),
            input_event_types: info.input_event_types,
            output_event_types: info.output_event_types,
            endpoint: String::new(),
            health_endpoint: info.health_endpoint,
            max_inflight: info.max_inflight,
            metadata: info.metadata.into_iter().collect(),
        };
        let reg = components::register(&self.node, &self.data, spec).await?;
        let what = format!("component/{}", reg.id.0);
        let resp = Response::new(legacy::RegistrationAck {
            service_id: reg.id.0,
            topic_names: reg.topics,
            connection_info: reg.connection_info.into_iter().collect(),
        });
        Ok(crate::audit::resource(resp, what))
    }

    async fn heartbeat(
        &self,
        req: Request<legacy::ServiceHeartbeat>,
    ) -> Result<Response<()>, Status> {
        check_component_scope(&req, &req.get_ref().service_id)?;
        let hb = req.into_inner();
        let beat = Beat {
            id: ComponentId(hb.service_id),
            metrics: hb
                .metrics
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
            status: 0,
        };
        components::heartbeat(&self.node, &self.live, beat).await?;
        Ok(Response::new(()))
    }

    async fn get_service_status(
        &self,
        req: Request<legacy::ServiceInfo>,
    ) -> Result<Response<legacy::ServiceStatus>, Status> {
        let info = req.into_inner();
        let id = if info.service_id.is_empty() {
            info.component_id
        } else {
            info.service_id
        };
        let view = components::get(&self.node, &self.live, &id).await?;
        Ok(Response::new(status_legacy(&view)))
    }

    async fn list_services(
        &self,
        _req: Request<()>,
    ) -> Result<Response<legacy::ServiceList>, Status> {
        let (views, _) =
            components::list(&self.node, &self.live, Consistency::Linearizable).await?;
        Ok(Response::new(legacy::ServiceList {
            services: views.iter().map(status_legacy).collect(),
        }))
    }
}

#[tonic::async_trait]
impl v1::control_plane_service_server::ControlPlaneService for ComponentApis {
    async fn register_component(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = req.get_ref();
        let requested = r
            .component
            .as_ref()
            .map(|c| c.id.as_str())
            .unwrap_or_default();
        let id = components::choose_id(&[&r.component_id, requested])?;
        check_component_scope(&req, &id.0)?;
        let req = req.into_inner();
        let c = req.component.unwrap_or_default();
        let spec = ComponentSpec {
            id,
            api: Api::V1,
            kind: kind_from_v1(c.r#type),
            name: c.name,
            description: c.description,
            version: c.version,
            input_event_types: c.input_event_types,
            output_event_types: c.output_event_types,
            endpoint: c.endpoint,
            // The v1 API has no health field; the agent names its URL in the metadata.
            health_endpoint: c
                .metadata
                .get(HEALTH_ENDPOINT_METADATA_KEY)
                .cloned()
                .unwrap_or_default(),
            max_inflight: 0,
            metadata: c.metadata.into_iter().collect(),
        };
        let reg = components::register(&self.node, &self.data, spec).await?;
        let what = format!("component/{}", reg.id.0);
        let resp = Response::new(v1::RegisterResponse {
            service_id: reg.id.0,
            assigned_topics: reg.topics,
            connection_info: reg.connection_info.into_iter().collect(),
        });
        Ok(crate::audit::resource(resp, what))
    }

    async fn unregister_component(
        &self,
        req: Request<v1::UnregisterRequest>,
    ) -> Result<Response<()>, Status> {
        check_component_scope(&req, &req.get_ref().service_id)?;
        let id = req.into_inner().service_id;
        components::unregister(&self.node, &id).await?;
        Ok(crate::audit::resource(
            Response::new(()),
            format!("component/{id}"),
        ))
    }

    async fn discover_components(
        &self,
        req: Request<v1::DiscoveryRequest>,
    ) -> Result<Response<v1::DiscoveryResponse>, Status> {
        let req = req.into_inner();
        let (views, _) =
            components::list(&self.node, &self.live, Consistency::Linearizable).await?;
        let want_kind = kind_from_v1(req.r#type);
        let found = views
            .iter()
            .map(|v| &v.record.spec)
            .filter(|s| req.r#type == 0 || s.kind == want_kind)
            .filter(|s| {
                req.event_types.is_empty()
                    || req.event_types.iter().any(|e| {
                        s.input_event_types.contains(e) || s.output_event_types.contains(e)
                    })
            })
            .filter(|s| {
                req.metadata_filters
                    .iter()
                    .all(|(k, v)| s.metadata.get(k) == Some(v))
            })
            .map(info_v1)
            .collect();
        Ok(Response::new(v1::DiscoveryResponse { components: found }))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<Response<()>, Status> {
        check_component_scope(&req, &req.get_ref().service_id)?;
        let hb = req.into_inner();
        let beat = Beat {
            id: ComponentId(hb.service_id),
            metrics: hb.metrics.into_iter().collect(),
            status: hb.status,
        };
        components::heartbeat(&self.node, &self.live, beat).await?;
        Ok(Response::new(()))
    }

    async fn get_component_status(
        &self,
        req: Request<v1::ComponentStatusRequest>,
    ) -> Result<Response<v1::ComponentStatusResponse>, Status> {
        let view = components::get(&self.node, &self.live, &req.into_inner().service_id).await?;
        Ok(Response::new(status_v1(&view)))
    }

    async fn list_components(
        &self,
        req: Request<v1::ListComponentsRequest>,
    ) -> Result<Response<v1::ListComponentsResponse>, Status> {
        let req = req.into_inner();
        let (views, _) =
            components::list(&self.node, &self.live, Consistency::Linearizable).await?;
        let want = kind_from_v1(req.type_filter);
        Ok(Response::new(v1::ListComponentsResponse {
            components: views
                .iter()
                .filter(|v| req.type_filter == 0 || v.record.spec.kind == want)
                .filter(|v| req.include_unhealthy || v.record.healthy)
                .map(status_v1)
                .collect(),
        }))
    }
}

fn admin_component(view: &ComponentView) -> apb::Component {
    let spec = &view.record.spec;
    let reported = view
        .live
        .as_ref()
        .and_then(|l| v1::HealthStatus::try_from(l.status).ok())
        .filter(|s| *s != v1::HealthStatus::Unknown)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("HEALTH_STATUS_")
                .to_owned()
        })
        .unwrap_or_default();
    apb::Component {
        id: spec.id.0.clone(),
        name: spec.name.clone(),
        r#type: spec.kind.as_str().to_owned(),
        pipeline: spec.metadata.get("pipeline").cloned().unwrap_or_default(),
        status: if view.record.healthy {
            "healthy"
        } else {
            "unhealthy"
        }
        .to_owned(),
        reported_status: reported,
        last_heartbeat: view.live.as_ref().and_then(|l| ts(l.last_heartbeat_ms)),
        metrics: view
            .live
            .as_ref()
            .map(|l| l.metrics.clone().into_iter().collect())
            .unwrap_or_default(),
        endpoint: spec.endpoint.clone(),
        health_endpoint: spec.health_endpoint.clone(),
        input_event_types: spec.input_event_types.clone(),
        output_event_types: spec.output_event_types.clone(),
        metadata: spec.metadata.clone().into_iter().collect::<HashMap<_, _>>(),
        registered_at: ts(view.record.registered_at_ms),
        api: match spec.api {
            Api::V1 => "v1",
            Api::Legacy => "legacy",
        }
        .to_owned(),
        version: spec.version.clone(),
        description: spec.description.clone(),
    }
}

#[tonic::async_trait]
impl apb::component_service_server::ComponentService for ComponentApis {
    async fn list_components(
        &self,
        req: Request<apb::ListComponentsRequest>,
    ) -> Result<Response<apb::ListComponentsResponse>, Status> {
        let consistency = match apb::Consistency::try_from(req.into_inner().consistency) {
            Ok(apb::Consistency::Stale) => Consistency::Stale,
            _ => Consistency::Linearizable,
        };
        let (views, meta) = components::list(&self.node, &self.live, consistency).await?;
        Ok(Response::new(apb::ListComponentsResponse {
            components: views.iter().map(admin_component).collect(),
            meta: Some(apb::ReadMeta {
                node_id: meta.node_id,
                consistency: if meta.linearizable { 0 } else { 1 },
                applied_index: meta.applied_index,
                known_commit_index: meta.known_commit_index,
            }),
        }))
    }

    async fn get_component(
        &self,
        req: Request<apb::GetComponentRequest>,
    ) -> Result<Response<apb::Component>, Status> {
        let view = components::get(&self.node, &self.live, &req.into_inner().id).await?;
        Ok(Response::new(admin_component(&view)))
    }
}
