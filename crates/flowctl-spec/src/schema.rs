//! The JSON Schema of a `flowctl/v1` Pipeline, generated from the types in [`crate::model`].

use crate::model::PipelineManifest;
use serde_json::Value;

/// The JSON Schema (draft 2020-12) of a Pipeline document, for editors: point a YAML language
/// server at it (`# yaml-language-server: $schema=...`) to get completion and hover help.
///
/// Validation accepts the camelCase spelling of every snake_case field as an alias; the schema
/// lists those aliases too, marked `deprecated`, so editors accept them but complete the
/// snake_case names. Rules that span fields (exactly one of `command` and `image`, inputs that
/// exist and form a DAG, port clashes) are checked only by [`crate::validate_pipeline`].
pub fn pipeline_schema() -> Value {
    let mut schema = schemars::schema_for!(PipelineManifest).to_value();
    add_aliases(&mut schema);
    schema
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn add_aliases(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                let aliases: Vec<(String, Value)> = props
                    .iter()
                    .filter(|(name, _)| name.contains('_'))
                    .map(|(name, schema)| {
                        let mut alias = schema.clone();
                        if let Value::Object(a) = &mut alias {
                            a.insert("deprecated".into(), Value::Bool(true));
                            a.insert(
                                "description".into(),
                                Value::String(format!("Alias of `{name}`.")),
                            );
                        }
                        (camel_case(name), alias)
                    })
                    .collect();
                for (name, alias) in aliases {
                    props.entry(name).or_insert(alias);
                }
            }
            for (_, child) in map.iter_mut() {
                add_aliases(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(add_aliases),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{
        BUS_FIELDS, COMPONENT_FIELDS, DOCKER_FIELDS, METADATA_FIELDS, RESOURCES_FIELDS,
        ROOT_FIELDS, SPEC_FIELDS,
    };

    fn props<'a>(schema: &'a Value, def: Option<&str>) -> Vec<&'a str> {
        let node = match def {
            None => schema,
            Some(d) => &schema["$defs"][d],
        };
        let mut names: Vec<&str> = node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties for {def:?}: {schema:#}"))
            .iter()
            .filter(|(_, v)| v.get("deprecated").is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    fn sorted(fields: &[&'static str]) -> Vec<&'static str> {
        let mut v = fields.to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn schema_fields_match_the_validator() {
        let s = pipeline_schema();
        assert_eq!(props(&s, None), sorted(ROOT_FIELDS));
        assert_eq!(props(&s, Some("Metadata")), sorted(METADATA_FIELDS));
        assert_eq!(props(&s, Some("PipelineSpec")), sorted(SPEC_FIELDS));
        assert_eq!(props(&s, Some("Bus")), sorted(BUS_FIELDS));
        assert_eq!(props(&s, Some("Component")), sorted(COMPONENT_FIELDS));
        assert_eq!(props(&s, Some("DockerSettings")), sorted(DOCKER_FIELDS));
        assert_eq!(props(&s, Some("Resources")), sorted(RESOURCES_FIELDS));
    }

    #[test]
    fn schema_lists_camel_case_aliases_and_rejects_unknown_fields() {
        let s = pipeline_schema();
        let c = &s["$defs"]["Component"];
        assert_eq!(c["properties"]["inputEventTypes"]["deprecated"], true);
        assert_eq!(c["additionalProperties"], false);
        assert_eq!(s["properties"]["apiVersion"]["const"], crate::API_VERSION);
        assert_eq!(camel_case("replication_factor"), "replicationFactor");
    }
}
