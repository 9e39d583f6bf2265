//! The fields container drivers use: `image_pull_policy`, `resources` and `spec.docker`, and
//! how changing them shows in the apply plan ([`flowctl_spec::component_change_details`]).
//! Refusals are golden cases in `diagnostics/`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_spec::{
    component_change_details, component_changes, validate_pipeline, Component, ComponentChange,
    Driver, PullPolicy, Resources, ValidatedPipeline,
};

/// A two-component pipeline with `driver`, `spec_extra` (lines under `spec:`) and `extra`
/// (lines of the source component), indented as written.
fn doc(driver: &str, spec_extra: &str, extra: &str) -> String {
    format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: containers\nspec:\n  driver: {driver}\n{spec_extra}  sources:\n    - id: src\n      image: example/src:1\n{extra}  sinks:\n    - id: out\n      image: example/out:1\n      inputs: [src]\n"
    )
}

fn valid(text: &str) -> ValidatedPipeline {
    validate_pipeline("containers.yaml", text)
        .unwrap_or_else(|e| panic!("{}\n{text}", e.lines().join("\n")))
}

fn src(p: &ValidatedPipeline) -> &Component {
    &p.spec().sources[0]
}

#[test]
fn pull_policies_are_accepted_with_container_drivers() {
    for driver in ["docker", "kubernetes"] {
        for policy in PullPolicy::ALL {
            let p = valid(&doc(
                driver,
                "",
                &format!("      image_pull_policy: {policy}\n"),
            ));
            assert_eq!(src(&p).image_pull_policy, Some(policy));
            assert_eq!(src(&p).pull_policy(), policy);
        }
    }
    // camelCase alias, and the default.
    let p = valid(&doc("docker", "", "      imagePullPolicy: Never\n"));
    assert_eq!(src(&p).pull_policy(), PullPolicy::Never);
    let p = valid(&doc("docker", "", ""));
    assert_eq!(src(&p).image_pull_policy, None);
    assert_eq!(src(&p).pull_policy(), PullPolicy::IfNotPresent);
    assert_eq!(PullPolicy::default(), PullPolicy::IfNotPresent);
}

#[test]
fn command_overrides_the_entrypoint_with_container_drivers() {
    for driver in ["docker", "kubernetes"] {
        let p = valid(&doc(
            driver,
            "",
            "      command: [\"/usr/local/bin/src\", \"--verbose\"]\n      args: [\"x\"]\n",
        ));
        assert_eq!(src(&p).command, ["/usr/local/bin/src", "--verbose"]);
        assert_eq!(src(&p).args, ["x"]);
        assert_eq!(src(&p).image.as_deref(), Some("example/src:1"));
    }
}

#[test]
fn pull_policy_serializes_in_kubernetes_spelling() {
    let p = valid(&doc(
        "docker",
        "",
        "      image_pull_policy: IfNotPresent\n",
    ));
    let json = serde_json::to_value(src(&p)).unwrap();
    assert_eq!(json["image_pull_policy"], "IfNotPresent");
    for policy in PullPolicy::ALL {
        assert_eq!(
            serde_json::to_value(policy).unwrap(),
            serde_json::Value::String(policy.as_str().to_owned())
        );
    }
}

#[test]
fn resources_are_parsed() {
    let p = valid(&doc(
        "docker",
        "",
        "      resources:\n        cpu: 500m\n        memory: 256Mi\n",
    ));
    let r = src(&p).resources.as_ref().unwrap();
    assert_eq!((r.cpu(), r.memory()), (Some("500m"), Some("256Mi")));
    assert_eq!(r.cpu_millis(), Some(500));
    assert_eq!(r.memory_bytes(), Some(256 << 20));
    // The written form is what is stored and compared; the parsed values are not serialized.
    assert_eq!(
        serde_json::to_value(r).unwrap(),
        serde_json::json!({"cpu": "500m", "memory": "256Mi"})
    );

    let cases: &[(&str, Option<u64>, Option<u64>)] = &[
        ("{cpu: \"2\"}", Some(2000), None),
        ("{cpu: 2}", Some(2000), None),
        ("{cpu: 1.5}", Some(1500), None),
        ("{cpu: \"0.25\", memory: 1Gi}", Some(250), Some(1 << 30)),
        ("{memory: 512M}", None, Some(512_000_000)),
        ("{memory: \"1000000000\"}", None, Some(1_000_000_000)),
        ("{memory: 10000000}", None, Some(10_000_000)),
        ("{memory: 1.5Gi}", None, Some(3 << 29)),
        ("{}", None, None),
    ];
    for (yaml, cpu, memory) in cases {
        let p = valid(&doc(
            "kubernetes",
            "",
            &format!("      resources: {yaml}\n"),
        ));
        let r = src(&p).resources.as_ref().unwrap();
        assert_eq!(
            (r.cpu_millis(), r.memory_bytes()),
            (*cpu, *memory),
            "{yaml}"
        );
    }
    let p = valid(&doc("docker", "", "      resources: {cpu: 10m}\n"));
    assert_eq!(
        src(&p).resources.as_ref().unwrap().cpu_millis(),
        Some(flowctl_spec::MIN_DOCKER_CPU_MILLIS)
    );
    // Kubernetes takes finer CPU limits than Docker does.
    let p = valid(&doc("kubernetes", "", "      resources: {cpu: 1m}\n"));
    assert_eq!(src(&p).resources.as_ref().unwrap().cpu_millis(), Some(1));
    // Absent and null mean no limits.
    let p = valid(&doc("docker", "", "      resources:\n"));
    assert_eq!(src(&p).resources, None);
}

#[test]
fn resources_new_checks_each_quantity() {
    let r = Resources::new(Some("1.5".into()), Some("1Gi".into())).unwrap();
    assert_eq!(
        (r.cpu_millis(), r.memory_bytes()),
        (Some(1500), Some(1 << 30))
    );
    assert!(!r.is_empty());
    assert!(Resources::new(None, None).unwrap().is_empty());
    let e = Resources::new(Some("lots".into()), None).unwrap_err();
    assert!(e.starts_with("resources.cpu: "), "{e}");
    let e = Resources::new(None, Some("99999999999999Ti".into())).unwrap_err();
    assert!(e.starts_with("resources.memory: "), "{e}");
}

#[test]
fn docker_settings_default_to_the_host_network() {
    let p = valid(&doc(
        "docker",
        "  docker:\n    network: flowctl_net-1.x\n",
        "",
    ));
    assert_eq!(p.spec().docker.as_ref().unwrap().network, "flowctl_net-1.x");
    assert_eq!(p.spec().docker_network(), Some("flowctl_net-1.x"));
    let p = valid(&doc("docker", "  docker: {}\n", ""));
    assert_eq!(p.spec().docker.as_ref().unwrap().network, "host");
    assert_eq!(p.spec().docker_network(), Some("host"));
    let p = valid(&doc("docker", "", ""));
    assert_eq!(p.spec().docker, None);
    assert_eq!(p.spec().docker_network(), Some("host"));
    let p = valid(&doc("kubernetes", "", ""));
    assert_eq!(p.spec().driver, Driver::Kubernetes);
    assert_eq!(p.spec().docker_network(), None);
}

#[test]
fn every_new_field_together() {
    let p = valid(&doc(
        "docker",
        "  docker:\n    network: bridge\n",
        "      image_pull_policy: Always\n      resources:\n        cpu: \"1\"\n        memory: 6Mi\n",
    ));
    let c = src(&p);
    assert_eq!(c.pull_policy(), PullPolicy::Always);
    let r = c.resources.as_ref().unwrap();
    assert_eq!(
        (r.cpu_millis(), r.memory_bytes()),
        (Some(1000), Some(6 << 20))
    );
    assert_eq!(p.spec().docker_network(), Some("bridge"));
}

fn plan(old: &str, new: &str) -> Vec<ComponentChange> {
    let (old, new) = (valid(old), valid(new));
    let details = component_change_details(Some(&old), &new);
    let plain: Vec<(String, &str)> = details.iter().map(|c| (c.id.clone(), c.action)).collect();
    assert_eq!(plain, component_changes(Some(&old), &new));
    details
}

fn described(changes: &[ComponentChange]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|c| (c.id.clone(), c.describe()))
        .collect()
}

fn one(id: &str, what: &str) -> Vec<(String, String)> {
    vec![(id.to_owned(), what.to_owned())]
}

#[test]
fn an_image_change_restarts_the_component_and_says_so() {
    let old = doc("docker", "", "");
    let new = old.replace("example/src:1", "example/src:2");
    assert_eq!(
        described(&plan(&old, &new)),
        one("src", "restart (image example/src:1 → example/src:2)")
    );
}

#[test]
fn pull_policy_and_resource_changes_restart_the_component() {
    let base = doc("docker", "", "");
    let always = doc("docker", "", "      image_pull_policy: Always\n");
    assert_eq!(
        described(&plan(&base, &always)),
        one("src", "restart (image_pull_policy IfNotPresent → Always)")
    );
    let limited = doc("docker", "", "      resources: {cpu: 500m, memory: 1Gi}\n");
    assert_eq!(
        described(&plan(&base, &limited)),
        one(
            "src",
            "restart (resources.cpu unset → 500m, resources.memory unset → 1Gi)"
        )
    );
    let more = doc("docker", "", "      resources: {cpu: 500m, memory: 2Gi}\n");
    assert_eq!(
        described(&plan(&limited, &more)),
        one("src", "restart (resources.memory 1Gi → 2Gi)")
    );
    let both = doc(
        "docker",
        "",
        "      image_pull_policy: Never\n      resources: {cpu: 500m, memory: 2Gi}\n",
    )
    .replace("example/src:1", "example/src:2");
    assert_eq!(
        described(&plan(&more, &both)),
        one(
            "src",
            "restart (image example/src:1 → example/src:2, image_pull_policy IfNotPresent → Never)"
        )
    );
}

#[test]
fn spelled_out_defaults_restart_nothing() {
    let base = doc("docker", "", "");
    for same in [
        doc("docker", "", "      image_pull_policy: IfNotPresent\n"),
        doc("docker", "", "      resources: {}\n"),
        doc("docker", "  docker: {network: host}\n", ""),
        doc("docker", "  docker: {}\n", ""),
    ] {
        assert_eq!(plan(&base, &same), [], "{same}");
        assert_eq!(plan(&same, &base), [], "{same}");
    }
}

#[test]
fn pipeline_settings_restart_every_component() {
    let host = doc("docker", "", "");
    let bridge = doc("docker", "  docker: {network: bridge}\n", "");
    let why = "restart (spec.docker.network host → bridge)";
    assert_eq!(
        described(&plan(&host, &bridge)),
        [
            ("out".to_owned(), why.to_owned()),
            ("src".to_owned(), why.to_owned())
        ]
    );
    let kube = doc("kubernetes", "", "");
    let changes = described(&plan(&host, &kube));
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes
            .iter()
            .all(|(_, d)| d == "restart (spec.driver docker → kubernetes)"),
        "{changes:?}"
    );
}

#[test]
fn starts_and_stops_have_no_reasons() {
    let p = valid(&doc("docker", "", ""));
    let created = component_change_details(None, &p);
    assert_eq!(
        described(&created),
        [
            ("out".to_owned(), "start".to_owned()),
            ("src".to_owned(), "start".to_owned())
        ]
    );
    assert_eq!(component_change_details(Some(&p), &p), []);
    let renamed = valid(&doc("docker", "", "").replace("id: out", "id: sink"));
    assert_eq!(
        described(&component_change_details(Some(&p), &renamed)),
        [
            ("out".to_owned(), "stop".to_owned()),
            ("sink".to_owned(), "start".to_owned())
        ]
    );
}
