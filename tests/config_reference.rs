//! The configuration reference cannot drift from the code: every key of `sse_bridge::Config` is
//! documented in `docs/configuration.md` with its real default, every key documented there
//! exists, `bridge.toml` shows every key (set or commented), and the Helm chart's
//! `values.schema.json` accepts exactly the keys the bridge has (less the ones the chart sets).
//!
//! The keys are not listed here: they are discovered from the structs through serde. A
//! `deny_unknown_fields` struct answers an unknown field with the list of its fields (Option
//! fields included), and a section deserialized from `{}` serializes back to its defaults. So a
//! new field, a renamed one or a changed default fails this test until the docs follow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value, json};
use sse_bridge::Config;

const PROBE: &str = "__config_reference_probe__";

/// One step of a key path: a table field, or "every element of this array of tables".
#[derive(Clone, Debug)]
enum Step {
    Field(String),
    Each(String),
}

/// Nests `inner` at `path`: `[Field(a), Each(b)]` gives `{"a": {"b": [inner]}}`.
fn wrap(path: &[Step], inner: Value) -> Value {
    path.iter().rev().fold(inner, |acc, step| match step {
        Step::Field(f) => json!({ f.clone(): acc }),
        Step::Each(f) => json!({ f.clone(): [acc] }),
    })
}

fn key_name(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Field(f) => f.clone(),
            Step::Each(f) => format!("{f}[]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The fields of the struct at `path`, from serde's "unknown field" error; None if the value
/// there is not a struct (the probe then fails with another error).
fn fields_at(path: &[Step]) -> Option<Vec<String>> {
    let err = serde_json::from_value::<Config>(wrap(path, json!({ PROBE: 0 }))).err()?.to_string();
    let rest = err.strip_prefix(&format!("unknown field `{PROBE}`, "))?;
    if rest.starts_with("there are no fields") {
        return Some(Vec::new());
    }
    let list = rest.strip_prefix("expected one of ").or_else(|| rest.strip_prefix("expected "))?;
    Some(list.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// The defaults of the table at `path` (only `Field` steps): deserialize `{}` there, serialize.
fn defaults_at(path: &[Step]) -> Option<Map<String, Value>> {
    let config: Config = serde_json::from_value(wrap(path, json!({}))).ok()?;
    let mut v = serde_json::to_value(&config).expect("Config serializes");
    for step in path {
        match step {
            Step::Field(f) => v = v.get(f)?.clone(),
            Step::Each(_) => return None,
        }
    }
    v.as_object().cloned()
}

/// Every key of the configuration with its default (None: unset by default, or required).
fn config_keys() -> BTreeMap<String, Option<Value>> {
    let mut keys = BTreeMap::new();
    walk(&[], &mut keys);
    assert!(keys.len() > 40, "found only {} keys: {keys:?}", keys.len());
    keys
}

fn walk(path: &[Step], keys: &mut BTreeMap<String, Option<Value>>) {
    let fields = fields_at(path).unwrap_or_else(|| panic!("{} is not a struct", key_name(path)));
    let defaults = defaults_at(path).unwrap_or_default();
    for f in fields {
        let mut p = path.to_vec();
        p.push(Step::Field(f.clone()));
        match defaults.get(&f) {
            Some(Value::Object(_)) => walk(&p, keys),
            Some(Value::Array(a))
                if a.is_empty() && fields_at(&[path, &[Step::Each(f.clone())]].concat()).is_some() =>
            {
                walk(&[path, &[Step::Each(f)]].concat(), keys)
            }
            Some(v) => {
                keys.insert(key_name(&p), Some(v.clone()));
            }
            // Absent from the defaults: an Option. A table (an optional section) or a value.
            None if fields_at(&p).is_some() => walk(&p, keys),
            None => {
                keys.insert(key_name(&p), None);
            }
        }
    }
}

/// A default as docs/configuration.md writes it: the TOML literal.
fn toml_literal(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap(),
        Value::Array(a) => format!("[{}]", a.iter().map(toml_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            format!(
                "{{ {} }}",
                m.iter().map(|(k, v)| format!("{k} = {}", toml_literal(v))).collect::<Vec<_>>().join(", ")
            )
        }
        other => other.to_string(),
    }
}

fn repo_file(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Rows of the reference tables: `| `key` | type | default | meaning |` → key → default cell.
fn documented_keys() -> BTreeMap<String, String> {
    let md = repo_file("docs/configuration.md");
    let mut rows = BTreeMap::new();
    for line in md.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 4 || !line.trim_start().starts_with('|') {
            continue;
        }
        let Some(key) = cells[0].strip_prefix('`').and_then(|k| k.strip_suffix('`')) else { continue };
        if !key.contains('.') {
            continue;
        }
        let prev = rows.insert(key.to_owned(), cells[2].to_owned());
        assert!(prev.is_none(), "docs/configuration.md documents `{key}` twice");
    }
    rows
}

#[test]
fn configuration_md_documents_every_key_with_its_default() {
    let keys = config_keys();
    let documented = documented_keys();
    let mut problems = Vec::new();
    for (key, default) in &keys {
        let Some(cell) = documented.get(key) else {
            let d = default.as_ref().map_or("unset".to_owned(), |v| format!("`{}`", toml_literal(v)));
            problems.push(format!("`{key}` is not in docs/configuration.md (default {d})"));
            continue;
        };
        match default {
            Some(v) => {
                let want = format!("`{}`", toml_literal(v));
                if !cell.starts_with(&want) {
                    problems.push(format!("`{key}`: default documented as {cell:?}, the code's is {want}"));
                }
            }
            None => {
                if !(cell.starts_with("unset") || cell.starts_with("required")) {
                    problems.push(format!(
                        "`{key}` has no default: document it as \"unset …\" or \"required\", not {cell:?}"
                    ));
                }
            }
        }
    }
    for key in documented.keys() {
        if !keys.contains_key(key) {
            problems.push(format!("docs/configuration.md documents `{key}`, which the config structs do not have"));
        }
    }
    assert!(problems.is_empty(), "docs/configuration.md is out of date:\n  {}", problems.join("\n  "));
}

/// Keys in bridge.toml, set or commented out: `key = …` and `# key = …` under `[section]`,
/// `[[section]]` or their commented forms, and the fields of inline tables in a list.
fn bridge_toml_keys() -> BTreeSet<String> {
    let text = repo_file("bridge.toml");
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for raw in text.lines() {
        let line = raw.trim_start_matches('#').trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            section = format!("{}[]", h.trim());
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|h| h.split(']').next())
            && h.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            && !h.is_empty()
        {
            section = h.to_owned();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()) {
            continue;
        }
        let key = if section.is_empty() { k.to_owned() } else { format!("{section}.{k}") };
        // `rules = [{topics = "a", access = "public"}]`: the fields of the inline tables.
        let v = v.trim();
        if v.starts_with("[{") || v.starts_with("[ {") {
            for part in v.split(['{', ',']) {
                if let Some((f, _)) = part.split_once('=') {
                    keys.insert(format!("{key}[].{}", f.trim()));
                }
            }
        }
        keys.insert(key);
    }
    keys
}

#[test]
fn bridge_toml_shows_every_key() {
    let keys = config_keys();
    let shown = bridge_toml_keys();
    let missing: Vec<_> = keys.keys().filter(|k| !shown.contains(*k)).collect();
    assert!(missing.is_empty(), "bridge.toml neither sets nor shows (commented) these keys: {missing:?}");
    // A shown key that does not exist is a typo the bridge would refuse (or a stale example).
    let known: BTreeSet<String> = keys
        .keys()
        .flat_map(|k| {
            // `auth.rules[].topics` also makes `auth.rules` a key of the file.
            let mut v = vec![k.clone()];
            if let Some(i) = k.rfind("[].") {
                v.push(k[..i].to_owned());
            }
            v
        })
        .collect();
    let unknown: Vec<_> = shown.iter().filter(|k| !known.contains(*k)).collect();
    assert!(unknown.is_empty(), "bridge.toml shows keys the config structs do not have: {unknown:?}");
}

/// Keys the chart sets itself (from ports and Secrets), so its schema must not offer them.
const CHART_OWNED: &[&str] = &["server.listen", "admin.listen", "publish.token", "auth.secret"];

fn schema_keys(node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(props) = node.get("properties").and_then(Value::as_object) else { return };
    for (k, v) in props {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if v.get("properties").is_some() {
            schema_keys(v, &key, out);
        } else if let Some(items) = v.get("items").filter(|i| i.get("properties").is_some()) {
            schema_keys(items, &format!("{key}[]"), out);
        } else {
            out.insert(key);
        }
    }
}

#[test]
fn chart_values_schema_offers_exactly_the_bridge_keys() {
    let schema: Value = serde_json::from_str(&repo_file("charts/sse-bridge/values.schema.json")).unwrap();
    let config = &schema["properties"]["config"];
    assert_eq!(config["additionalProperties"], json!(false), "config must refuse unknown sections");
    let mut offered = BTreeSet::new();
    schema_keys(config, "", &mut offered);
    let want: BTreeSet<String> = config_keys().into_keys().filter(|k| !CHART_OWNED.contains(&k.as_str())).collect();
    let missing: Vec<_> = want.difference(&offered).collect();
    let extra: Vec<_> = offered.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "charts/sse-bridge/values.schema.json `config` is out of date.\n  missing (add them): {missing:?}\n  \
         not in the bridge (remove them): {extra:?}"
    );
}

#[test]
fn key_discovery_finds_what_it_must() {
    // Guards the discovery itself: if serde's error text changed, the tests above would pass
    // vacuously on an empty or partial key list.
    let keys = config_keys();
    for k in ["server.listen", "admin.listen", "publish.token", "nats.url", "redis.patterns", "delivery[].topics"] {
        assert!(keys.contains_key(k), "key discovery missed `{k}`: {keys:?}");
    }
    assert_eq!(keys["server.listen"], Some(json!("127.0.0.1:8080")));
    assert_eq!(keys["publish.token"], None);
    assert_eq!(keys["delivery[].max_rate"], None);
}
