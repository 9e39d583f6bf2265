//! A tower layer that counts gRPC requests by method and status code.
//!
//! Unary errors are sent trailers-only, so the code is in the response headers; a response
//! without `grpc-status` in its headers carries it in trailers, which for our unary services
//! means success.

use http::{Request, Response};
use prost::Message as _;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

#[derive(Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "CANCELLED",
        Ok(tonic::Code::InvalidArgument) => "INVALID_ARGUMENT",
        Ok(tonic::Code::DeadlineExceeded) => "DEADLINE_EXCEEDED",
        Ok(tonic::Code::NotFound) => "NOT_FOUND",
        Ok(tonic::Code::AlreadyExists) => "ALREADY_EXISTS",
        Ok(tonic::Code::PermissionDenied) => "PERMISSION_DENIED",
        Ok(tonic::Code::ResourceExhausted) => "RESOURCE_EXHAUSTED",
        Ok(tonic::Code::FailedPrecondition) => "FAILED_PRECONDITION",
        Ok(tonic::Code::Aborted) => "ABORTED",
        Ok(tonic::Code::OutOfRange) => "OUT_OF_RANGE",
        Ok(tonic::Code::Unimplemented) => "UNIMPLEMENTED",
        Ok(tonic::Code::Internal) => "INTERNAL",
        Ok(tonic::Code::Unavailable) => "UNAVAILABLE",
        Ok(tonic::Code::DataLoss) => "DATA_LOSS",
        Ok(tonic::Code::Unauthenticated) => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The full path (`/package.Service/Method`) of every method this server registers: ours,
/// health and reflection (v1 and v1alpha, served with `--enable-reflection`), read from their
/// descriptor sets.
static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    [
        flowctl_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(|bytes| {
        prost_types::FileDescriptorSet::decode(bytes)
            .expect("descriptor sets compiled into the binary decode")
            .file
    })
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let prefix = if package.is_empty() {
                format!("/{}/", service.name())
            } else {
                format!("/{package}.{}/", service.name())
            };
            service
                .method
                .into_iter()
                .map(move |m| format!("{prefix}{}", m.name()))
        })
    })
    .collect()
});

/// Every method path this server serves (`/package.Service/Method`): the authorization
/// table's test checks each has an entry.
#[cfg(test)]
pub(crate) fn served_methods() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(String::as_str)
}

/// Only registered method paths become labels (without the leading '/'), so the label set
/// stays bounded whatever paths clients send.
fn method_label(path: &str) -> &'static str {
    match METHODS.get(path) {
        Some(known) => &known[1..],
        None => "other",
    }
}

impl<S, B, RB> Service<Request<B>> for GrpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(code_name)
                    .unwrap_or("OK"),
                Err(_) => "UNKNOWN",
            };
            metrics::counter!("flowctl_grpc_requests_total", "method" => method, "code" => code)
                .increment(1);
            metrics::histogram!("flowctl_grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_methods_are_labels_and_any_other_path_is_other() {
        for (path, label) in [
            (
                "/flowctl.admin.v1.PipelineService/ApplyPipeline",
                "flowctl.admin.v1.PipelineService/ApplyPipeline",
            ),
            (
                "/flowctl.internal.v1.LivenessService/RelayHeartbeats",
                "flowctl.internal.v1.LivenessService/RelayHeartbeats",
            ),
            (
                "/grpc.health.v1.Health/Check",
                "grpc.health.v1.Health/Check",
            ),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ),
            ("/flowctl.admin.v1.PipelineService/NoSuchMethod", "other"),
            ("/flowctl.a1b2c3", "other"),
            ("/grpc.health.v1.Health/", "other"),
            ("flowctl.admin.v1.PipelineService/ApplyPipeline", "other"),
            ("/", "other"),
            ("", "other"),
        ] {
            assert_eq!(method_label(path), label, "{path}");
        }
    }

    #[test]
    fn every_service_of_ours_has_its_methods_registered() {
        for service in [
            "/flowctl.ControlPlane/",
            "/flowctl.v1.ControlPlaneService/",
            "/flowctl.internal.v1.RaftService/",
            "/flowctl.internal.v1.LivenessService/",
            "/flowctl.admin.v1.ReplayService/",
            "/grpc.health.v1.Health/",
        ] {
            assert!(METHODS.iter().any(|m| m.starts_with(service)), "{service}");
        }
    }
}
