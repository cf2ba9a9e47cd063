//! Kubernetes' rules for object names, label and annotation keys and label values, checked
//! before a claim so that a bad `label:<k>` or volume name is a 400 naming it, not an apiserver
//! refusal halfway through a take.

fn name_part(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain (the name of most objects, e.g. a PersistentVolume): ≤ 253 characters,
/// dot-separated labels of lower-case letters, digits and `-`.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
                && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63 characters of
/// `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn qualified_name(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && name_part(name, 63),
        None => name_part(k, 63),
    }
}

/// A DNS-1123 label (an object name): ≤ 63 lower-case letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn dns_label(s: &str) -> bool {
    !s.contains('.') && dns_subdomain(s) && s.len() <= 63
}

/// A `generateName` prefix: a DNS-1123 label once the apiserver appends 5 characters, so at most
/// 58 characters, and it may end with `-`.
pub fn generate_name_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= 58 && dns_label(&format!("{s}x"))
}

/// A label value: empty, or ≤ 63 characters like a name part.
pub fn label_value(v: &str) -> bool {
    v.is_empty() || name_part(v, 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        for ok in ["app", "a.b-c_d", "example.com/app", "A1"] {
            assert!(qualified_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a&b",
            "-a",
            "a-",
            "x/",
            "/x",
            "Ex.com/a",
            &"a".repeat(64),
            "a/b/c",
        ] {
            assert!(!qualified_name(bad), "{bad}");
        }
        assert!(label_value("") && label_value("v1.2") && !label_value("a b"));
    }

    #[test]
    fn object_names_and_prefixes() {
        for ok in ["a", "my-clone-1", &"a".repeat(63)] {
            assert!(dns_label(ok), "{ok}");
        }
        for bad in ["", "My", "a.b", "-a", "a-", &"a".repeat(64), "a_b"] {
            assert!(!dns_label(bad), "{bad}");
        }
        for ok in ["clone-", "c", &"a".repeat(58)] {
            assert!(generate_name_prefix(ok), "{ok}");
        }
        for bad in ["", "-x", "Clone-", &"a".repeat(59)] {
            assert!(!generate_name_prefix(bad), "{bad}");
        }
    }
}
