//! The component registry: registered sources, processors and sinks, and their replicated
//! health status. Only status *transitions* are commands; heartbeats never reach the log.

use crate::{Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A component's id (its service id on the wire).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ComponentId(pub String);

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest accepted component id.
pub const MAX_ID_LEN: usize = 253;

impl ComponentId {
    /// Checks an id: 1 to 253 printable characters without whitespace.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("component id must not be empty".into());
        }
        if s.len() > MAX_ID_LEN {
            return Err(format!("component id is longer than {MAX_ID_LEN} bytes"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "component id {s:?} contains whitespace or control characters"
            ));
        }
        Ok(ComponentId(s.to_owned()))
    }
}

/// What a component does. The legacy API's SINK and the current API's CONSUMER are one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ComponentKind {
    Unspecified,
    Source,
    Processor,
    Sink,
    Pipeline,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Unspecified => "unspecified",
            ComponentKind::Source => "source",
            ComponentKind::Processor => "processor",
            ComponentKind::Sink => "sink",
            ComponentKind::Pipeline => "pipeline",
        }
    }
}

/// Which original API the component registered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    Legacy,
    V1,
}

/// A component's description, as it registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    pub id: ComponentId,
    pub api: Api,
    pub kind: ComponentKind,
    pub name: String,
    pub description: String,
    pub version: String,
    pub input_event_types: Vec<String>,
    pub output_event_types: Vec<String>,
    /// gRPC `host:port` (current API).
    pub endpoint: String,
    /// HTTP health URL (legacy API).
    pub health_endpoint: String,
    pub max_inflight: i32,
    pub metadata: BTreeMap<String, String>,
}

/// A registered component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub spec: ComponentSpec,
    /// The replicated liveness status, changed only by transitions the leader proposes.
    pub healthy: bool,
    pub registered_at_ms: u64,
    pub status_changed_at_ms: u64,
    /// Log index of the last change.
    pub revision: u64,
    /// Registered (or re-registered with a changed description) and not heard from since:
    /// the registration alone does not show that the component runs. The leader clears it
    /// (a [`SetHealth`]) after the first heartbeat, and rollouts wait for that. Absent
    /// (false) in records of older releases, which were heard from.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_heartbeat: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub spec: ComponentSpec,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unregister {
    pub id: ComponentId,
    /// Why, for the log: "unregistered" or "expired".
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetHealth {
    pub id: ComponentId,
    pub healthy: bool,
    pub at_ms: u64,
}

pub(crate) fn register(state: &mut State, index: u64, c: &Register) -> (Outcome, Vec<Touched>) {
    // The server checks the id before proposing; a command from elsewhere (an older or a
    // faulty proposer) is checked again here, as pipeline and token names are.
    if let Err(e) = ComponentId::parse(&c.spec.id.0) {
        return (Outcome::Rejected(Rejection::Invalid(e)), vec![]);
    }
    let id = c.spec.id.clone();
    match state.components.get_mut(&id) {
        // Idempotent: the same description from a live component changes nothing.
        Some(existing) if existing.spec == c.spec && existing.healthy => (
            Outcome::Component {
                record: existing.clone(),
                created: false,
            },
            vec![],
        ),
        Some(existing) => {
            existing.spec = c.spec.clone();
            existing.healthy = true;
            // A new status stamp, so the leader counts only heartbeats after this one.
            existing.status_changed_at_ms = c.at_ms;
            existing.awaiting_heartbeat = true;
            existing.revision = index;
            (
                Outcome::Component {
                    record: existing.clone(),
                    created: false,
                },
                vec![Touched::Component(id)],
            )
        }
        None => {
            let record = ComponentRecord {
                spec: c.spec.clone(),
                healthy: true,
                registered_at_ms: c.at_ms,
                status_changed_at_ms: c.at_ms,
                revision: index,
                awaiting_heartbeat: true,
            };
            state.components.insert(id.clone(), record.clone());
            (
                Outcome::Component {
                    record,
                    created: true,
                },
                vec![Touched::Component(id)],
            )
        }
    }
}

pub(crate) fn unregister(state: &mut State, c: &Unregister) -> (Outcome, Vec<Touched>) {
    match state.components.remove(&c.id) {
        Some(_) => (
            Outcome::ComponentRemoved { id: c.id.clone() },
            vec![Touched::Component(c.id.clone())],
        ),
        None => (
            Outcome::Rejected(Rejection::NotFound {
                kind: "component".into(),
                name: c.id.0.clone(),
            }),
            vec![],
        ),
    }
}

pub(crate) fn set_health(state: &mut State, index: u64, c: &SetHealth) -> (Outcome, Vec<Touched>) {
    match state.components.get_mut(&c.id) {
        Some(rec) if rec.healthy == c.healthy && !rec.awaiting_heartbeat => {
            (Outcome::HealthUnchanged, vec![])
        }
        Some(rec) => {
            // Any transition the leader decides follows a heartbeat or its absence, so the
            // component is no longer awaiting its first one.
            rec.awaiting_heartbeat = false;
            rec.healthy = c.healthy;
            rec.status_changed_at_ms = c.at_ms;
            rec.revision = index;
            (
                Outcome::HealthChanged {
                    id: c.id.clone(),
                    healthy: c.healthy,
                },
                vec![Touched::Component(c.id.clone())],
            )
        }
        None => (
            Outcome::Rejected(Rejection::NotFound {
                kind: "component".into(),
                name: c.id.0.clone(),
            }),
            vec![],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, Command};

    fn spec(id: &str, version: &str) -> ComponentSpec {
        ComponentSpec {
            id: ComponentId(id.into()),
            api: Api::V1,
            kind: ComponentKind::Processor,
            name: "ttp".into(),
            description: String::new(),
            version: version.into(),
            input_event_types: vec!["a".into()],
            output_event_types: vec!["b".into()],
            endpoint: "h:1".into(),
            health_endpoint: String::new(),
            max_inflight: 0,
            metadata: BTreeMap::new(),
        }
    }

    fn reg(id: &str, version: &str, at: u64) -> Command {
        Command::RegisterComponent(Register {
            spec: spec(id, version),
            at_ms: at,
        })
    }

    #[test]
    fn reregistering_the_same_id_replaces_without_duplicating() {
        let mut s = State::default();
        let (o, _) = apply(&mut s, 1, &reg("c1", "1", 10));
        assert!(matches!(o, Outcome::Component { created: true, .. }));
        let (o, t) = apply(&mut s, 2, &reg("c1", "1", 20));
        assert!(matches!(o, Outcome::Component { created: false, .. }));
        assert!(t.is_empty(), "identical re-registration writes nothing");
        let (_, t) = apply(&mut s, 3, &reg("c1", "2", 30));
        assert_eq!(t.len(), 1);
        assert_eq!(s.components.len(), 1);
        let rec = &s.components[&ComponentId("c1".into())];
        assert_eq!(rec.spec.version, "2");
        assert_eq!(rec.registered_at_ms, 10);
    }

    #[test]
    fn health_transitions_and_registration_revives() {
        let mut s = State::default();
        apply(&mut s, 1, &reg("c1", "1", 10));
        let id = ComponentId("c1".into());
        let down = Command::SetComponentHealth(SetHealth {
            id: id.clone(),
            healthy: false,
            at_ms: 50,
        });
        assert!(matches!(
            apply(&mut s, 2, &down).0,
            Outcome::HealthChanged { healthy: false, .. }
        ));
        assert!(matches!(
            apply(&mut s, 3, &down).0,
            Outcome::HealthUnchanged
        ));
        assert!(!s.components[&id].healthy);
        apply(&mut s, 4, &reg("c1", "1", 60));
        assert!(s.components[&id].healthy);
        assert_eq!(s.components[&id].status_changed_at_ms, 60);
    }

    #[test]
    fn a_registration_awaits_its_first_heartbeat_until_the_leader_confirms_it() {
        let mut s = State::default();
        let id = ComponentId("c1".into());
        apply(&mut s, 1, &reg("c1", "1", 10));
        assert!(s.components[&id].awaiting_heartbeat);
        let up = |at_ms| {
            Command::SetComponentHealth(SetHealth {
                id: id.clone(),
                healthy: true,
                at_ms,
            })
        };
        // Healthy already, but the confirmation is a change.
        assert!(matches!(
            apply(&mut s, 2, &up(20)).0,
            Outcome::HealthChanged { healthy: true, .. }
        ));
        assert!(!s.components[&id].awaiting_heartbeat);
        assert!(matches!(
            apply(&mut s, 3, &up(30)).0,
            Outcome::HealthUnchanged
        ));
        // The same description again changes nothing; a changed one awaits a heartbeat again.
        apply(&mut s, 4, &reg("c1", "1", 40));
        assert!(!s.components[&id].awaiting_heartbeat);
        apply(&mut s, 5, &reg("c1", "2", 50));
        assert!(s.components[&id].awaiting_heartbeat);
        assert_eq!(s.components[&id].status_changed_at_ms, 50);
    }

    #[test]
    fn unregister_removes_and_unknown_ids_are_rejections() {
        let mut s = State::default();
        apply(&mut s, 1, &reg("c1", "1", 10));
        let un = Command::UnregisterComponent(Unregister {
            id: ComponentId("c1".into()),
            reason: "unregistered".into(),
        });
        assert!(matches!(
            apply(&mut s, 2, &un).0,
            Outcome::ComponentRemoved { .. }
        ));
        assert!(matches!(
            apply(&mut s, 3, &un).0,
            Outcome::Rejected(Rejection::NotFound { .. })
        ));
        let hb = Command::SetComponentHealth(SetHealth {
            id: ComponentId("nope".into()),
            healthy: true,
            at_ms: 1,
        });
        assert!(matches!(apply(&mut s, 4, &hb).0, Outcome::Rejected(_)));
    }

    #[test]
    fn ids_are_checked() {
        assert!(ComponentId::parse("ttp-processor").is_ok());
        assert!(ComponentId::parse("").is_err());
        assert!(ComponentId::parse("a b").is_err());
        assert!(ComponentId::parse(&"x".repeat(300)).is_err());
    }
}
