//! The three calls the agent makes, over either wire API. Building the requests is pure (and
//! unit-tested); sending them goes through `flowctl_client::Client`, which fails over across
//! endpoints on `UNAVAILABLE` with backoff, jitter and a deadline.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

use flowctl_client::Client;
use flowctl_proto::legacy::control_plane_client::ControlPlaneClient;
use flowctl_proto::v1::control_plane_service_client::ControlPlaneServiceClient;
use flowctl_proto::{legacy, v1};
use tonic::Status;

use crate::component::{ComponentDescription, HealthStatus};
use crate::config::{AgentConfig, Api, ComponentId};
use crate::metrics::Value;
use crate::Error;

pub use flowctl_proto::v1::HEALTH_ENDPOINT_METADATA_KEY;

/// The id the control plane knows this component instance by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the control plane answered to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub service_id: ServiceId,
    /// Kafka topics assigned to this component (`assigned_topics` / `topic_names`).
    pub topics: Vec<String>,
    /// Brokers, control-plane endpoints and the like.
    pub connection_info: BTreeMap<String, String>,
    /// The control-plane endpoint that accepted the registration.
    pub endpoint: Option<String>,
}

/// What a registration request is built from.
pub(crate) struct RegisterInput<'a> {
    pub(crate) component: &'a ComponentDescription,
    pub(crate) component_id: Option<&'a ComponentId>,
    /// The service id of an earlier registration, asked for again so that a re-registration
    /// keeps the component's identity even when neither id above was given.
    pub(crate) previous: Option<&'a ServiceId>,
    pub(crate) health_url: &'a str,
}

pub(crate) struct ControlPlane {
    client: Client,
    api: Api,
}

impl ControlPlane {
    pub(crate) fn new(config: &AgentConfig) -> Result<Self, Error> {
        Ok(ControlPlane {
            client: client(config)?,
            api: config.api,
        })
    }

    pub(crate) async fn register(&self, input: &RegisterInput<'_>) -> Result<Registration, Status> {
        let asked = requested_id(input);
        let (service_id, topics, connection_info) = match self.api {
            Api::V1 => {
                let req = v1_register_request(input);
                let r = self
                    .client
                    .call(|ch| {
                        let req = req.clone();
                        async move {
                            ControlPlaneServiceClient::new(ch)
                                .register_component(req)
                                .await
                        }
                    })
                    .await?
                    .into_inner();
                (r.service_id, r.assigned_topics, r.connection_info)
            }
            Api::Legacy => {
                let req = legacy_service_info(input);
                let r = self
                    .client
                    .call(|ch| {
                        let req = req.clone();
                        async move { ControlPlaneClient::new(ch).register(req).await }
                    })
                    .await?
                    .into_inner();
                (r.service_id, r.topic_names, r.connection_info)
            }
        };
        let service_id = if service_id.is_empty() {
            asked
        } else {
            service_id
        };
        if service_id.is_empty() {
            return Err(Status::internal(
                "the control plane accepted the registration but returned no service id",
            ));
        }
        Ok(Registration {
            service_id: ServiceId(service_id),
            topics,
            connection_info: connection_info.into_iter().collect(),
            endpoint: self.client.last_endpoint(),
        })
    }

    pub(crate) async fn heartbeat(
        &self,
        id: &ServiceId,
        status: HealthStatus,
        metrics: &[(String, Value)],
    ) -> Result<(), Status> {
        match self.api {
            Api::V1 => {
                let req = v1_heartbeat(id, status, metrics);
                self.client
                    .call(|ch| {
                        let req = req.clone();
                        async move { ControlPlaneServiceClient::new(ch).heartbeat(req).await }
                    })
                    .await?;
            }
            Api::Legacy => {
                let req = legacy_heartbeat(id, metrics, SystemTime::now());
                self.client
                    .call(|ch| {
                        let req = req.clone();
                        async move { ControlPlaneClient::new(ch).heartbeat(req).await }
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Returns `Ok(false)` when the API has no unregister call (legacy).
    pub(crate) async fn unregister(&self, id: &ServiceId) -> Result<bool, Status> {
        match self.api {
            Api::V1 => {
                let req = v1::UnregisterRequest {
                    service_id: id.0.clone(),
                };
                self.client
                    .call(|ch| {
                        let req = req.clone();
                        async move {
                            ControlPlaneServiceClient::new(ch)
                                .unregister_component(req)
                                .await
                        }
                    })
                    .await?;
                Ok(true)
            }
            Api::Legacy => Ok(false),
        }
    }
}

/// A client of the configured endpoints that sends the configured token (if any) on every
/// call: registration, heartbeats, unregistration, chunk commands and reports.
pub(crate) fn client(config: &AgentConfig) -> Result<Client, Error> {
    use flowctl_client::{TlsSetting, ENV_CACERT, ENV_CERT, ENV_KEY};
    fn setting<'a>(name: &'static str, path: &'a Option<std::path::PathBuf>) -> TlsSetting<'a> {
        TlsSetting {
            name,
            path: path.as_deref(),
        }
    }
    let tls = flowctl_client::tls_config(
        setting(ENV_CACERT, &config.tls.ca),
        setting(ENV_CERT, &config.tls.cert),
        setting(ENV_KEY, &config.tls.key),
    )
    .map_err(Error::Tls)?;
    Client::new_with_tls(&config.endpoints, config.request_timeout, tls)
        .map_err(Error::Endpoints)?
        .with_token(config.token.as_ref().map(|t| t.expose()))
        .map_err(Error::Token)
}

fn requested_id(input: &RegisterInput<'_>) -> String {
    if let Some(id) = input.component_id {
        id.as_str().to_owned()
    } else if !input.component.id.is_empty() {
        input.component.id.clone()
    } else {
        input.previous.map(|p| p.0.clone()).unwrap_or_default()
    }
}

pub(crate) fn v1_register_request(input: &RegisterInput<'_>) -> v1::RegisterRequest {
    let c = input.component;
    let mut metadata: HashMap<String, String> = c.metadata.clone().into_iter().collect();
    metadata
        .entry(HEALTH_ENDPOINT_METADATA_KEY.to_owned())
        .or_insert_with(|| input.health_url.to_owned());
    let id = if c.id.is_empty() {
        input.previous.map(|p| p.0.clone()).unwrap_or_default()
    } else {
        c.id.clone()
    };
    v1::RegisterRequest {
        component: Some(v1::ComponentInfo {
            id,
            name: c.name.clone(),
            description: c.description.clone(),
            version: c.version.clone(),
            r#type: c.kind.to_v1() as i32,
            input_event_types: c.input_event_types.clone(),
            output_event_types: c.output_event_types.clone(),
            endpoint: c.endpoint.clone(),
            metadata,
        }),
        component_id: input
            .component_id
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
    }
}

pub(crate) fn legacy_service_info(input: &RegisterInput<'_>) -> legacy::ServiceInfo {
    let c = input.component;
    let service_id = if c.id.is_empty() {
        input.previous.map(|p| p.0.clone()).unwrap_or_default()
    } else {
        c.id.clone()
    };
    legacy::ServiceInfo {
        service_id,
        service_type: c.kind.to_legacy() as i32,
        input_event_types: c.input_event_types.clone(),
        output_event_types: c.output_event_types.clone(),
        health_endpoint: input.health_url.to_owned(),
        max_inflight: c.max_inflight,
        metadata: c.metadata.clone().into_iter().collect(),
        component_id: input
            .component_id
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
    }
}

pub(crate) fn v1_heartbeat(
    id: &ServiceId,
    status: HealthStatus,
    metrics: &[(String, Value)],
) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        service_id: id.0.clone(),
        status: status.to_v1() as i32,
        metrics: metrics
            .iter()
            .map(|(name, v)| (name.clone(), v.to_text()))
            .collect(),
    }
}

pub(crate) fn legacy_heartbeat(
    id: &ServiceId,
    metrics: &[(String, Value)],
    now: SystemTime,
) -> legacy::ServiceHeartbeat {
    legacy::ServiceHeartbeat {
        service_id: id.0.clone(),
        timestamp: Some(prost_types::Timestamp::from(now)),
        metrics: metrics
            .iter()
            .map(|(name, v)| (name.clone(), v.as_f64()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor() -> ComponentDescription {
        ComponentDescription::processor("ttp")
            .with_input_event_type("stellar.ledger.v1.LedgerCloseMeta")
            .with_output_event_type("token_transfer.v1.TokenTransferEvent")
            .with_metadata("network", "testnet")
    }

    #[test]
    fn v1_request_carries_component_id_and_health_url() {
        let c = processor();
        let id = ComponentId::new("ttp-processor");
        let req = v1_register_request(&RegisterInput {
            component: &c,
            component_id: id.as_ref(),
            previous: None,
            health_url: "http://127.0.0.1:9000/health",
        });
        assert_eq!(req.component_id, "ttp-processor");
        let info = req.component.unwrap();
        assert_eq!(info.r#type, v1::ComponentType::Processor as i32);
        assert_eq!(
            info.input_event_types,
            ["stellar.ledger.v1.LedgerCloseMeta"]
        );
        assert_eq!(info.metadata["network"], "testnet");
        assert_eq!(
            info.metadata[HEALTH_ENDPOINT_METADATA_KEY],
            "http://127.0.0.1:9000/health"
        );
    }

    #[test]
    fn reregistration_without_ids_asks_for_the_previous_service_id() {
        let c = processor();
        let prev = ServiceId("generated-7".into());
        let input = RegisterInput {
            component: &c,
            component_id: None,
            previous: Some(&prev),
            health_url: "",
        };
        assert_eq!(
            v1_register_request(&input).component.unwrap().id,
            "generated-7"
        );
        assert_eq!(legacy_service_info(&input).service_id, "generated-7");
        assert_eq!(requested_id(&input), "generated-7");
    }

    #[test]
    fn legacy_request_maps_consumer_to_sink_and_metrics_to_doubles() {
        let c = ComponentDescription::consumer("app").with_max_inflight(10);
        let info = legacy_service_info(&RegisterInput {
            component: &c,
            component_id: None,
            previous: None,
            health_url: "http://h/health",
        });
        assert_eq!(info.service_type, legacy::ServiceType::Sink as i32);
        assert_eq!(info.health_endpoint, "http://h/health");
        assert_eq!(info.max_inflight, 10);
        let hb = legacy_heartbeat(
            &ServiceId("s".into()),
            &[("events".into(), Value::Counter(3))],
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(hb.metrics["events"], 3.0);
        assert_eq!(hb.timestamp.unwrap().seconds, 0);
    }

    #[test]
    fn v1_heartbeat_carries_status_and_metrics_as_text() {
        let hb = v1_heartbeat(
            &ServiceId("s".into()),
            HealthStatus::Degraded,
            &[
                ("events".into(), Value::Counter(3)),
                ("lag".into(), Value::Gauge(0.5)),
            ],
        );
        assert_eq!(hb.status, v1::HealthStatus::Degraded as i32);
        assert_eq!(hb.metrics["events"], "3");
        assert_eq!(hb.metrics["lag"], "0.5");
    }
}
