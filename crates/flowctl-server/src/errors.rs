//! The one place where service errors become gRPC statuses.

use flowctl_state::Rejection;

/// Errors of the service layer, kept apart by whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is wrong; the problems carry field paths and line:column.
    #[error("{0}")]
    Invalid(#[from] flowctl_spec::Error),
    #[error("{0}")]
    BadArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Overloaded(String),
    /// A dependency (Kafka) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A concurrent change won; the request may be retried.
    #[error("{0}")]
    Conflict(String),
    /// A precondition of the request does not hold (an incompatible schema, say).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Raft(#[from] flowctl_raft::Error),
    /// The state machine returned an outcome this request did not expect: a bug.
    #[error("unexpected outcome: {0}")]
    Unexpected(String),
}

impl From<Rejection> for ServiceError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::NotFound { .. } => ServiceError::NotFound(r.to_string()),
            Rejection::Invalid(m) => ServiceError::BadArgument(m),
            Rejection::Conflict(m) => ServiceError::Conflict(m),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(err) => {
                let mut details = tonic_types::ErrorDetails::new();
                for p in &err.problems {
                    let field = if p.path.is_empty() {
                        "document".to_owned()
                    } else {
                        p.path.clone()
                    };
                    let loc = if p.line > 0 {
                        format!("{}:{}:{}: ", err.file, p.line, p.column)
                    } else {
                        String::new()
                    };
                    details.add_bad_request_violation(field, format!("{loc}{}", p.message));
                }
                <tonic::Status as tonic_types::StatusExt>::with_error_details(
                    tonic::Code::InvalidArgument,
                    err.to_string(),
                    details,
                )
            }
            ServiceError::BadArgument(m) => tonic::Status::invalid_argument(m),
            ServiceError::NotFound(m) => tonic::Status::not_found(m),
            ServiceError::Overloaded(m) => tonic::Status::resource_exhausted(m),
            ServiceError::Conflict(m) => tonic::Status::aborted(m),
            ServiceError::Unavailable(m) => tonic::Status::unavailable(m),
            ServiceError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ServiceError::Raft(r) => flowctl_raft::error_to_status(&r),
            ServiceError::Unexpected(m) => {
                tracing::error!(error = %m, "unexpected state machine outcome");
                tonic::Status::internal("internal error")
            }
        }
    }
}
