//! The schema registry service: push (with compatibility checks), list, get, modes, delete.
//!
//! A push is checked on the node that receives it, against state read linearizably, and the
//! proposed command carries what the check saw (each subject's latest version and mode). The
//! state machine refuses it if either changed before it committed; the push is then checked
//! again. So a concurrent push can never slip an unchecked version in.

use crate::clock::{now_ms, ts};
use crate::errors::ServiceError;
use flowctl_proto::admin::v1 as pb;
use flowctl_raft::RaftNode;
use flowctl_schema::{CompatibilityMode, Compiled, SubjectSchema};
use flowctl_state::schemas::{
    DeleteSchema, PushSchemas, PushSubject, Registry, SchemaRecord, SetCompatibility,
};
use flowctl_state::{Command, Outcome, Rejection};
use std::collections::BTreeMap;
use std::str::FromStr as _;
use tonic::{Request, Response, Status};

/// How often a push is checked again after losing a race with another write.
const PUSH_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct SchemaApi {
    pub node: RaftNode,
}

fn bad(e: flowctl_schema::Error) -> ServiceError {
    ServiceError::BadArgument(e.to_string())
}

/// A stored schema as the subject `subject` sees it.
fn as_subject(subject: &str, r: &SchemaRecord) -> SubjectSchema {
    SubjectSchema {
        subject: subject.to_owned(),
        package: r.package.clone(),
        file: r.file.clone(),
        source: r.source.clone(),
        descriptor_set: r.descriptor_set.clone(),
    }
}

/// One pushed subject as the registry has it: live versions (number, schema, fingerprint),
/// the latest live version, and the mode in force.
type SeenSubject = (Vec<(u32, SubjectSchema, String)>, Option<u32>, String);

/// What a push needs from the registry, copied under one read.
struct Seen {
    subjects: BTreeMap<String, SeenSubject>,
    /// The latest schema of every subject of the package, before this push.
    previous: Vec<SubjectSchema>,
    /// The latest schema of every other subject.
    others: Vec<SubjectSchema>,
    /// Fingerprint → id of every stored schema.
    ids: BTreeMap<String, u64>,
}

fn seen(reg: &Registry, package: &str, names: &[String]) -> Seen {
    let latest_of = |s: &flowctl_state::schemas::Subject| {
        s.latest()
            .and_then(|v| reg.schemas.get(&v.schema_id))
            .map(|r| as_subject(&s.name, r))
    };
    let subjects = names
        .iter()
        .map(|n| {
            let (live, latest) = match reg.subjects.get(n) {
                Some(s) => (
                    s.live()
                        .filter_map(|v| {
                            reg.schemas
                                .get(&v.schema_id)
                                .map(|r| (v.version, as_subject(n, r), r.fingerprint.clone()))
                        })
                        .collect(),
                    s.latest().map(|v| v.version),
                ),
                None => (Vec::new(), None),
            };
            (n.clone(), (live, latest, reg.mode_of(n)))
        })
        .collect();
    let previous = reg
        .subjects
        .values()
        .filter(|s| s.package == package)
        .filter_map(latest_of)
        .collect();
    let others = reg
        .subjects
        .values()
        .filter(|s| s.package != package)
        .filter_map(latest_of)
        .collect();
    let ids = reg
        .schemas
        .values()
        .map(|r| (r.fingerprint.clone(), r.id))
        .collect();
    Seen {
        subjects,
        previous,
        others,
        ids,
    }
}

fn violation_pb(v: &flowctl_schema::Violation) -> pb::SchemaViolation {
    pb::SchemaViolation {
        subject: v.subject.clone(),
        file: v.file.clone(),
        line: v.line,
        column: v.column,
        path: v.path.clone(),
        rule: v.rule.to_string(),
        message: v.message.clone(),
        against_version: v.against_version.unwrap_or(0),
    }
}

impl SchemaApi {
    async fn push(
        &self,
        req: pb::PushSchemasRequest,
    ) -> Result<pb::PushSchemasResponse, ServiceError> {
        if req.package.is_empty() {
            return Err(ServiceError::BadArgument(
                "package: must not be empty".into(),
            ));
        }
        let compiled = Compiled::from_parts(req.descriptor_set, req.sources.into_iter().collect())
            .map_err(bad)?;
        let candidates = flowctl_schema::subjects(&compiled, &req.package).map_err(bad)?;
        let mut fingerprints = Vec::with_capacity(candidates.len());
        for c in &candidates {
            flowctl_schema::check_size(c).map_err(bad)?;
            fingerprints.push(flowctl_schema::fingerprint(c).map_err(bad)?);
        }
        let names: Vec<String> = candidates.iter().map(|c| c.subject.clone()).collect();
        for _ in 0..PUSH_ATTEMPTS {
            let (seen, _) = self
                .node
                .read_linearizable(|s| seen(&s.schemas, &req.package, &names))
                .await?;
            let mut violations = Vec::new();
            let mut results = Vec::new();
            let mut pushes = Vec::new();
            for (c, fp) in candidates.iter().zip(&fingerprints) {
                let (live, latest, mode_name) = &seen.subjects[&c.subject];
                let mode = CompatibilityMode::from_str(mode_name).map_err(bad)?;
                let existing = live.iter().find(|(_, _, f)| f == fp);
                if existing.is_none() {
                    let history: Vec<(u32, &SubjectSchema)> =
                        live.iter().map(|(v, s, _)| (*v, s)).collect();
                    let found = flowctl_schema::check(mode, c, &history).map_err(bad)?;
                    violations.extend(found.iter().map(violation_pb));
                }
                results.push(pb::SubjectResult {
                    subject: c.subject.clone(),
                    version: existing.map(|(v, _, _)| *v).unwrap_or(0),
                    id: seen.ids.get(fp).copied().unwrap_or(0),
                    changed: existing.is_none(),
                    compatibility: mode_name.clone(),
                });
                pushes.push(PushSubject {
                    subject: c.subject.clone(),
                    fingerprint: fp.clone(),
                    file: c.file.clone(),
                    source: c.source.clone(),
                    descriptor_set: c.descriptor_set.clone(),
                    expect_latest: *latest,
                    expect_mode: mode_name.clone(),
                });
            }
            // Messages of the package that this push drops must not be used elsewhere.
            let deleted =
                flowctl_schema::check_deleted_references(&seen.previous, &candidates, &seen.others)
                    .map_err(bad)?;
            violations.extend(deleted.iter().map(violation_pb));
            if !violations.is_empty() || req.dry_run {
                return Ok(pb::PushSchemasResponse {
                    accepted: violations.is_empty(),
                    results,
                    violations,
                    applied_index: 0,
                });
            }
            let cmd = Command::PushSchemas(PushSchemas {
                package: req.package.clone(),
                subjects: pushes,
                at_ms: now_ms(),
            });
            let applied = self.node.propose(cmd).await?;
            match applied.outcome {
                Outcome::SchemasPushed(done) => {
                    let modes: BTreeMap<String, String> = results
                        .into_iter()
                        .map(|r| (r.subject, r.compatibility))
                        .collect();
                    return Ok(pb::PushSchemasResponse {
                        accepted: true,
                        results: done
                            .into_iter()
                            .map(|d| pb::SubjectResult {
                                compatibility: modes.get(&d.subject).cloned().unwrap_or_default(),
                                subject: d.subject,
                                version: d.version,
                                id: d.schema_id,
                                changed: d.changed,
                            })
                            .collect(),
                        violations: Vec::new(),
                        applied_index: applied.log_index,
                    });
                }
                Outcome::Rejected(Rejection::Conflict(m)) => {
                    tracing::debug!(reason = %m, "schema push raced another write; checking again");
                    continue;
                }
                Outcome::Rejected(r) => return Err(r.into()),
                other => return Err(ServiceError::Unexpected(format!("{other:?}"))),
            }
        }
        Err(ServiceError::Conflict(format!(
            "package {} kept changing during the push; try again",
            req.package
        )))
    }
}

fn check_mode(mode: &str) -> Result<String, ServiceError> {
    CompatibilityMode::from_str(mode)
        .map(|m| m.to_string())
        .map_err(|e| ServiceError::BadArgument(format!("compatibility: {e}")))
}

#[tonic::async_trait]
impl pb::schema_service_server::SchemaService for SchemaApi {
    async fn push(
        &self,
        req: Request<pb::PushSchemasRequest>,
    ) -> Result<Response<pb::PushSchemasResponse>, Status> {
        let resp = Response::new(SchemaApi::push(self, req.into_inner()).await?);
        Ok(crate::audit::resource(resp, "schemas".into()))
    }

    async fn list_subjects(
        &self,
        req: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let c = crate::pipelines::consistency_of(req.into_inner().consistency);
        let ((subjects, global), meta) = crate::pipelines::read(&self.node, c, |s| {
            let reg = &s.schemas;
            let subjects = reg
                .subjects
                .values()
                .map(|x| {
                    let latest = x.latest();
                    pb::SubjectInfo {
                        subject: x.name.clone(),
                        package: x.package.clone(),
                        latest_version: latest.map(|v| v.version).unwrap_or(0),
                        latest_id: latest.map(|v| v.schema_id).unwrap_or(0),
                        compatibility: reg.mode_of(&x.name),
                        updated_at: ts(x.updated_at_ms),
                        versions: x.live().map(|v| v.version).collect(),
                        deleted_versions: x
                            .versions
                            .iter()
                            .filter(|v| v.deleted)
                            .map(|v| v.version)
                            .collect(),
                    }
                })
                .collect::<Vec<_>>();
            let global = reg
                .meta
                .compatibility
                .clone()
                .unwrap_or_else(|| flowctl_state::schemas::DEFAULT_COMPATIBILITY.to_owned());
            (subjects, global)
        })
        .await?;
        Ok(Response::new(pb::ListSubjectsResponse {
            subjects,
            global_compatibility: global,
            meta: Some(crate::api::meta_pb(meta)),
        }))
    }

    async fn get_schema(
        &self,
        req: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        let req = req.into_inner();
        let c = crate::pipelines::consistency_of(req.consistency);
        let (found, meta) = crate::pipelines::read(&self.node, c, |s| {
            let reg = &s.schemas;
            let subject = reg.subjects.get(&req.subject)?;
            let v = if req.version == 0 {
                subject.latest()?
            } else {
                subject.live().find(|v| v.version == req.version)?
            };
            reg.schemas
                .get(&v.schema_id)
                .map(|r| (v.clone(), r.clone()))
        })
        .await?;
        let Some((v, r)) = found else {
            let what = if req.version == 0 {
                format!("subject {:?} not found", req.subject)
            } else {
                format!(
                    "version {} of subject {:?} not found",
                    req.version, req.subject
                )
            };
            return Err(ServiceError::NotFound(what).into());
        };
        Ok(Response::new(pb::GetSchemaResponse {
            subject: req.subject,
            version: v.version,
            id: r.id,
            fingerprint: r.fingerprint,
            package: r.package,
            file: r.file,
            source: r.source,
            descriptor_set: r.descriptor_set,
            registered_at: ts(v.registered_at_ms),
            meta: Some(crate::api::meta_pb(meta)),
        }))
    }

    async fn set_compatibility(
        &self,
        req: Request<pb::SetCompatibilityRequest>,
    ) -> Result<Response<pb::SetCompatibilityResponse>, Status> {
        let req = req.into_inner();
        let what = match req.subject.as_str() {
            "" => "subject/*".to_owned(),
            s => format!("subject/{s}"),
        };
        let mode = check_mode(&req.mode)?;
        let cmd = Command::SetCompatibility(SetCompatibility {
            subject: (!req.subject.is_empty()).then(|| req.subject.clone()),
            mode: Some(mode.clone()),
            at_ms: now_ms(),
        });
        let applied = self.node.propose(cmd).await.map_err(ServiceError::from)?;
        match applied.outcome {
            Outcome::CompatibilitySet => Ok(crate::audit::resource(
                Response::new(pb::SetCompatibilityResponse {
                    mode,
                    applied_index: applied.log_index,
                }),
                what,
            )),
            Outcome::Rejected(r) => Err(ServiceError::from(r).into()),
            other => Err(ServiceError::Unexpected(format!("{other:?}")).into()),
        }
    }

    async fn get_compatibility(
        &self,
        req: Request<pb::GetCompatibilityRequest>,
    ) -> Result<Response<pb::GetCompatibilityResponse>, Status> {
        let subject = req.into_inner().subject;
        let (found, _) = self
            .node
            .read_linearizable(|s| {
                let reg = &s.schemas;
                if subject.is_empty() {
                    return Some((reg.mode_of(""), reg.meta.compatibility.is_none()));
                }
                reg.subjects
                    .get(&subject)
                    .map(|x| (reg.mode_of(&subject), x.compatibility.is_none()))
            })
            .await
            .map_err(ServiceError::from)?;
        match found {
            Some((mode, inherited)) => Ok(Response::new(pb::GetCompatibilityResponse {
                mode,
                inherited,
            })),
            None => Err(ServiceError::NotFound(format!("subject {subject:?} not found")).into()),
        }
    }

    async fn delete_schema(
        &self,
        req: Request<pb::DeleteSchemaRequest>,
    ) -> Result<Response<pb::DeleteSchemaResponse>, Status> {
        let req = req.into_inner();
        let what = format!("subject/{}", req.subject);
        let cmd = Command::DeleteSchema(DeleteSchema {
            subject: req.subject,
            version: (req.version != 0).then_some(req.version),
            permanent: req.permanent,
            at_ms: now_ms(),
        });
        let applied = self.node.propose(cmd).await.map_err(ServiceError::from)?;
        match applied.outcome {
            Outcome::SchemasDeleted { versions, .. } => Ok(crate::audit::resource(
                Response::new(pb::DeleteSchemaResponse {
                    versions,
                    applied_index: applied.log_index,
                }),
                what,
            )),
            Outcome::Rejected(r) => Err(ServiceError::from(r).into()),
            other => Err(ServiceError::Unexpected(format!("{other:?}")).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_accepts_exactly_the_compilers_mode_names() {
        let names: Vec<&str> = CompatibilityMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, flowctl_state::schemas::COMPATIBILITY_MODES);
    }
}
