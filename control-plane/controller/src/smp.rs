//! A strategic merge patch for pod templates (the subset of Kubernetes' SMP that pod specs use):
//! maps merge recursively, `null` deletes a key, lists with a patch merge key (containers,
//! volumes, env, volumeMounts, ports, ...) merge element-wise by that key, other lists are
//! replaced; `$patch: delete` removes a keyed element and `$patch: replace` replaces a map.
//! `$setElementOrder/...` and `$retainKeys` directives are accepted and ignored.

use serde_json::{Map, Value};

/// Merge key of a list field, by field name (pod spec conventions).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => match field {
            "readinessGates" => Some("conditionType"),
            _ => Some("name"),
        },
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "ports" => Some("containerPort"),
        "hostAliases" => Some("ip"),
        _ => None,
    }
}

/// Removes `spec.containers: null` (an annotation-only patch must never wipe the containers).
pub fn sanitize(patch: &mut Value) {
    if let Some(spec) = patch.get_mut("spec").and_then(Value::as_object_mut) {
        for k in ["containers", "initContainers"] {
            if spec.get(k).is_some_and(Value::is_null) {
                spec.remove(k);
            }
        }
    }
}

/// Applies `patch` to `target` in place.
pub fn apply(target: &mut Value, patch: &Value) {
    merge_value(target, patch, None);
}

fn merge_value(target: &mut Value, patch: &Value, field: Option<&str>) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut clean = p.clone();
                clean.remove("$patch");
                *target = Value::Object(clean);
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                merge_value(entry, v, Some(k));
            }
        }
        Value::Array(items) => match field.and_then(merge_key) {
            Some(key) => {
                if !target.is_array() {
                    *target = Value::Array(Vec::new());
                }
                let t = target.as_array_mut().expect("array");
                for item in items {
                    let Some(id) = item.get(key) else {
                        t.push(item.clone());
                        continue;
                    };
                    let pos = t.iter().position(|x| x.get(key) == Some(id));
                    if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                        if let Some(i) = pos {
                            t.remove(i);
                        }
                        continue;
                    }
                    match pos {
                        Some(i) => merge_value(&mut t[i], item, None),
                        None => {
                            let mut fresh = Value::Object(Map::new());
                            merge_value(&mut fresh, item, None);
                            t.push(fresh);
                        }
                    }
                }
            }
            None => *target = patch.clone(),
        },
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_containers_by_name_and_env_by_name() {
        let mut t = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "b", "image": "b:1"}]}});
        apply(
            &mut t,
            &json!({"metadata": {"labels": {"l": "v"}}, "spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]}]}}),
        );
        assert_eq!(t["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(t["spec"]["containers"][1]["image"], "b:1");
        assert_eq!(
            t["spec"]["containers"][0]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}])
        );
        assert_eq!(t["metadata"]["labels"]["l"], "v");
    }

    #[test]
    fn directives_and_nulls() {
        let mut t = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeSelector": {"x": "1"}, "tolerations": [{"key": "k"}]}});
        apply(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}], "nodeSelector": {"$patch": "replace", "y": "2"},
            "tolerations": [{"key": "j"}], "$setElementOrder/containers": [{"name": "a"}]}}),
        );
        assert_eq!(t["spec"]["containers"], json!([{"name": "a"}]));
        assert_eq!(t["spec"]["nodeSelector"], json!({"y": "2"}));
        assert_eq!(t["spec"]["tolerations"], json!([{"key": "j"}]));
        apply(&mut t, &json!({"spec": {"nodeSelector": null}}));
        assert!(t["spec"].get("nodeSelector").is_none());
    }

    #[test]
    fn sanitize_keeps_containers() {
        let mut p = json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": null}});
        sanitize(&mut p);
        let mut t = json!({"spec": {"containers": [{"name": "a"}]}});
        apply(&mut t, &p);
        assert_eq!(t["spec"]["containers"], json!([{"name": "a"}]));
    }
}
