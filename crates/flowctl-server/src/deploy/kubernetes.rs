//! `flowctl render --target kubernetes`: the manifests that run a pipeline's components on
//! Kubernetes, for the user to apply with `kubectl`. No driver talks to a Kubernetes API
//! server; a pipeline with `driver: kubernetes` is stored (status `External`) and its
//! components, started by Kubernetes from these manifests, register through the agent.
//!
//! One Deployment per component: its replicas and image, the same environment the other
//! drivers inject ([`component_env`]), its `resources` as requests and limits, labels naming
//! the pipeline and component, and, when it has a `health_port`, liveness and readiness probes
//! on the agent's `/health`. Replicas of a Deployment are alike, so each registers under its
//! pod's name (`FLOWCTL_COMPONENT_ID` from the downward API) when there are several; the agent
//! token comes from a Secret (`<pipeline>-flowctl-token`, key `token`) that the user makes
//! from `flowctl auth token create`.

use flowctl_spec::{Component, ValidatedPipeline};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What the manifests need besides the pipeline.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The namespace of every manifest; `None` leaves it to `kubectl`.
    pub namespace: Option<String>,
    /// The control plane's address as the pods reach it (`FLOWCTL_ENDPOINT`), such as the
    /// `flowctl` Service of `deploy/kubernetes/flowctl.yaml`.
    pub endpoint: String,
    /// Brokers of a pipeline that names none.
    pub kafka_brokers: Vec<String>,
    /// `FLOWCTL_HEARTBEAT_INTERVAL`, in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// The environment every instance of `c` gets whatever runs it: `config` as UPPER_SNAKE
/// variables, then `env`, then what flowctl injects about the pipeline and its topics (which
/// wins over both). The drivers add what is per instance (id, replica, token, epoch, ports).
pub fn component_env(
    p: &ValidatedPipeline,
    c: &Component,
    brokers: &[String],
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in &c.config {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.insert(flowctl_spec::config_env_name(k), v);
    }
    for (k, v) in &c.env {
        env.insert(k.clone(), v.clone());
    }
    env.insert("ENABLE_FLOWCTL".into(), "true".into());
    env.insert("FLOWCTL_PIPELINE".into(), p.name().to_owned());
    env.insert("KAFKA_BROKERS".into(), brokers.join(","));
    env.insert("DLQ_TOPIC".into(), flowctl_spec::dlq_topic_name(p));
    let inputs: Vec<String> = c
        .inputs
        .iter()
        .map(|i| flowctl_spec::topic_name(p, i))
        .collect();
    env.insert("INPUT_TOPICS".into(), inputs.join(","));
    env.insert("OUTPUT_TOPIC".into(), flowctl_spec::topic_name(p, &c.id));
    env
}

/// The manifests of `p`: one Deployment per component, in the pipeline's order. An error
/// names a component the manifests cannot run (no `image`).
pub fn render(p: &ValidatedPipeline, opts: &RenderOptions) -> Result<Vec<Value>, String> {
    let brokers = super::brokers_of(p, &opts.kafka_brokers);
    let token_secret = format!("{}-flowctl-token", p.name());
    let mut out = Vec::new();
    for (_, c) in p.components() {
        let image = c.image.as_deref().ok_or_else(|| {
            format!(
                "component {}: no image (Kubernetes runs images; set image, or use the process driver)",
                c.id.as_str()
            )
        })?;
        let labels = json!({
            "app.kubernetes.io/name": c.id.as_str(),
            "app.kubernetes.io/part-of": p.name(),
            "app.kubernetes.io/managed-by": "flowctl",
            "io.flowctl.pipeline": p.name(),
            "io.flowctl.component": c.id.as_str(),
        });
        let selector = json!({
            "io.flowctl.pipeline": p.name(),
            "io.flowctl.component": c.id.as_str(),
        });
        let mut env: Vec<Value> = component_env(p, c, &brokers)
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        env.push(json!({"name": "FLOWCTL_ENDPOINT", "value": opts.endpoint}));
        env.push(json!({
            "name": "FLOWCTL_HEARTBEAT_INTERVAL",
            "value": format!("{}ms", opts.heartbeat_interval_ms),
        }));
        if c.replicas > 1 {
            env.push(json!({
                "name": "FLOWCTL_COMPONENT_ID",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            }));
        } else {
            env.push(json!({"name": "FLOWCTL_COMPONENT_ID", "value": c.id.as_str()}));
        }
        env.push(json!({
            "name": "FLOWCTL_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token", "optional": true}},
        }));
        let mut container = json!({
            "name": c.id.as_str(),
            "image": image,
            "imagePullPolicy": c.pull_policy().as_str(),
            "env": env,
        });
        if !c.command.is_empty() {
            container["command"] = json!(c.command);
        }
        if !c.args.is_empty() {
            container["args"] = json!(c.args);
        }
        if let Some(r) = c.resources.as_ref().filter(|r| !r.is_empty()) {
            let mut q = serde_json::Map::new();
            if let Some(cpu) = r.cpu() {
                q.insert("cpu".into(), json!(cpu));
            }
            if let Some(mem) = r.memory() {
                q.insert("memory".into(), json!(mem));
            }
            container["resources"] = json!({"limits": q, "requests": q});
        }
        if let Some(port) = c.health_port {
            container["env"]
                .as_array_mut()
                .expect("env is an array")
                .push(json!({"name": "HEALTH_PORT", "value": port.to_string()}));
            container["ports"] = json!([{"name": "health", "containerPort": port}]);
            let probe =
                json!({"httpGet": {"path": "/health", "port": "health"}, "periodSeconds": 10});
            container["livenessProbe"] = probe.clone();
            container["readinessProbe"] = probe;
        }
        let mut metadata = json!({
            "name": format!("{}-{}", p.name(), c.id.as_str()),
            "labels": labels,
        });
        if let Some(ns) = &opts.namespace {
            metadata["namespace"] = json!(ns);
        }
        out.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": c.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                    },
                },
            },
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(extra: &str) -> ValidatedPipeline {
        let text = format!(
            "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: p\nspec:\n  driver: kubernetes\n  sources:\n    - id: src\n      image: example/src:1\n      health_port: 8088\n      config:\n        startLedger: 5\n{extra}  sinks:\n    - id: out\n      image: example/out:1\n      replicas: 2\n      inputs: [src]\n"
        );
        flowctl_spec::validate_pipeline("p.yaml", &text)
            .unwrap_or_else(|e| panic!("{}", e.lines().join("\n")))
    }

    fn opts() -> RenderOptions {
        RenderOptions {
            namespace: Some("streams".into()),
            endpoint: "flowctl:8080".into(),
            kafka_brokers: vec!["kafka:9092".into()],
            heartbeat_interval_ms: 5000,
        }
    }

    fn env_of(d: &Value) -> BTreeMap<String, Value> {
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect()
    }

    #[test]
    fn each_component_is_a_deployment_with_the_injected_environment() {
        let p = pipeline("      resources: {cpu: 500m, memory: 64Mi}\n");
        let out = render(&p, &opts()).unwrap();
        assert_eq!(out.len(), 2);
        let src = &out[0];
        assert_eq!(src["kind"], "Deployment");
        assert_eq!(src["metadata"]["name"], "p-src");
        assert_eq!(src["metadata"]["namespace"], "streams");
        assert_eq!(src["spec"]["replicas"], 1);
        let c = &src["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "example/src:1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["resources"]["limits"]["cpu"], "500m");
        assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
        let env = env_of(src);
        assert_eq!(env["START_LEDGER"]["value"], "5");
        assert_eq!(env["KAFKA_BROKERS"]["value"], "kafka:9092");
        assert_eq!(env["OUTPUT_TOPIC"]["value"], "flowctl.p.src");
        assert_eq!(env["FLOWCTL_COMPONENT_ID"]["value"], "src");
        assert_eq!(env["HEALTH_PORT"]["value"], "8088");
        assert_eq!(
            env["FLOWCTL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
            "p-flowctl-token"
        );
        // Several replicas register under their pods' names.
        let sink = env_of(&out[1]);
        assert_eq!(
            sink["FLOWCTL_COMPONENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(sink["INPUT_TOPICS"]["value"], "flowctl.p.src");
        assert_eq!(out[1]["spec"]["replicas"], 2);
    }

    #[test]
    fn a_component_without_an_image_is_refused_by_name() {
        let text = "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: p\nspec:\n  sources:\n    - id: src\n      command: [src]\n  sinks:\n    - id: out\n      command: [out]\n      inputs: [src]\n";
        let p = flowctl_spec::validate_pipeline("p.yaml", text).unwrap();
        let err = render(&p, &opts()).unwrap_err();
        assert!(err.starts_with("component src: no image"), "{err}");
    }
}
