//! Schema fragments for fields whose upstream CRD is schemaless (pod and PVC templates keep
//! unknown fields so manifests written for upstream apply unchanged).

use schemars::{Schema, SchemaGenerator, json_schema};

/// An object whose content the apiserver stores as is.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A list of such objects.
pub fn preserve_unknown_object_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// A string map.
pub fn string_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "type": "string" }
    })
}

/// `persistentContents`: atomic list of `ip`, `memory`, `filesystem`.
pub fn persistent_contents(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "atomic",
        "items": { "type": "string", "enum": ["ip", "memory", "filesystem"] }
    })
}

/// Conditions as a list-map keyed by `type`.
pub fn conditions(g: &mut SchemaGenerator) -> Schema {
    let item = g.subschema_for::<crate::types::Condition>();
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item
    })
}

/// IntOrString (`maxUnavailable`).
pub fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{ "type": "integer" }, { "type": "string" }]
    })
}
