//! The module graph of `src/` has no cycles: lower files never import higher ones.
//!
//! Reads every file under `src/` (not `main.rs`, which is the binary), collects the crate paths
//! it names outside its `#[cfg(test)]` module (`crate::…`, `super::…`, `self::…`, and `use` of a
//! child module by its bare name, brace groups expanded), resolves each to the deepest file that
//! exists, and fails on any strongly connected component of more than one file, naming the
//! files and one import that closes the loop. A `mod x;` declaration is not an import; a
//! `pub use x::Y` re-export is. The rule it enforces is stated in `src/lib.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`sse::h1`, `` for the crate root) of a file under `src/`.
fn module_of(rel: &Path) -> Option<String> {
    let s = rel.to_str()?.strip_suffix(".rs")?;
    if s == "main" {
        return None;
    }
    if s == "lib" {
        return Some(String::new());
    }
    let s = s.strip_suffix("/mod").unwrap_or(s);
    Some(s.replace('/', "::"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src/") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code without comments, string contents and its `#[cfg(test)]` tail.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Tokens: identifiers, `::`, `{`, `}`, `,`, `;`, `*`, anything else as one char.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let c: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && i + 1 < c.len() && c[i + 1] == ':' {
            out.push("::".into());
            i += 2;
        } else if c[i].is_whitespace() {
            i += 1;
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

/// Expands the path (or use tree) starting at `t[i]` into full paths; returns where it ended.
fn expand(t: &[String], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    while let Some(tok) = t.get(i) {
        if tok == "{" {
            i += 1;
            loop {
                match t.get(i).map(String::as_str) {
                    Some("}") => {
                        i += 1;
                        break;
                    }
                    Some(",") => i += 1,
                    None => break,
                    _ => i = expand(t, i, path.clone(), out),
                }
            }
            return i;
        }
        if tok == "*" {
            out.push(path);
            return i + 1;
        }
        if !(tok.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_')) {
            break;
        }
        path.push(tok.clone());
        i += 1;
        if t.get(i).map(String::as_str) == Some("::") {
            i += 1;
        } else {
            break;
        }
    }
    if t.get(i).map(String::as_str) == Some("as") {
        i += 2;
    }
    out.push(path);
    i
}

/// Absolute module-path segments named by a relative path `segs` written in module `here`.
fn absolute(here: &[String], segs: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = here.to_vec();
    let mut rest = segs;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The deepest existing module named by `path`.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> String {
    for n in (0..=path.len()).rev() {
        let m = path[..n].join("::");
        if modules.contains(&m) {
            return m;
        }
    }
    String::new()
}

/// Every module each module imports, with one example path per edge.
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut by_module = BTreeMap::new();
    for f in &files {
        if let Some(m) = module_of(f.strip_prefix(src).expect("under src")) {
            by_module.insert(m, f.clone());
        }
    }
    let modules: BTreeSet<String> = by_module.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (m, f) in &by_module {
        let here: Vec<String> = if m.is_empty() { vec![] } else { m.split("::").map(str::to_owned).collect() };
        let is_dir = f.ends_with("mod.rs") || f.ends_with("lib.rs");
        let t = tokens(&code_of(&std::fs::read_to_string(f).expect("read source")));
        let mut paths = Vec::new();
        let mut i = 0;
        while i < t.len() {
            let tok = t[i].as_str();
            let after_path_sep = i > 0 && t[i - 1] == "::";
            // `pub(crate)`, `pub(super)`, `pub(in …)` are visibility, not paths.
            let visibility = i > 1 && t[i - 1] == "(" && (t[i - 2] == "pub" || t[i - 2] == "in");
            if visibility {
                i += 1;
                continue;
            }
            if (tok == "crate" || tok == "super" || (tok == "self" && t.get(i + 1).map(String::as_str) == Some("::")))
                && !after_path_sep
            {
                i = expand(&t, i, vec![], &mut paths).max(i + 1);
            } else if tok == "use" {
                // `use child::…` (uniform paths): a child module named by its bare name.
                let mut found = Vec::new();
                let end = expand(&t, i + 1, vec![], &mut found).max(i + 1);
                for p in found {
                    if let Some(first) = p.first() {
                        let mut child = here.clone();
                        child.push(first.clone());
                        if is_dir && modules.contains(&child.join("::")) {
                            let mut full = vec!["self".to_owned()];
                            full.extend(p);
                            paths.push(full);
                        } else if first == "crate" || first == "super" || first == "self" {
                            paths.push(p);
                        }
                    }
                }
                i = end;
            } else {
                i += 1;
            }
        }
        // In a file module (a.rs), `super` is the parent; in a dir module (a/mod.rs) the module
        // itself is `a`, so the same rule applies to its module path.
        for p in paths {
            let Some(abs) = absolute(&here, &p) else { continue };
            let target = resolve(&abs, &modules);
            if &target != m {
                edges.entry(m.clone()).or_default().entry(target).or_insert_with(|| p.join("::"));
            }
        }
        edges.entry(m.clone()).or_default();
    }
    edges
}

/// Strongly connected components (Tarjan) with more than one module.
fn cycles(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        if let Some(targets) = s.edges.get(v) {
            for w in targets.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn name(m: &str) -> &str {
    if m.is_empty() { "crate root (lib.rs)" } else { m }
}

#[test]
fn src_has_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    let found = cycles(&edges);
    let mut report = String::new();
    for comp in &found {
        report.push_str(&format!("cycle among {{{}}}:\n", comp.iter().map(|m| name(m)).collect::<Vec<_>>().join(", ")));
        for a in comp {
            for (b, example) in &edges[a] {
                if comp.contains(b) {
                    report.push_str(&format!("  {} -> {} (via {example})\n", name(a), name(b)));
                }
            }
        }
    }
    assert!(found.is_empty(), "src/ has import cycles; lower modules must not import higher ones:\n{report}");
}

/// The same graph between top-level modules (`sources/*` as one, `durable/*` as one, …), so
/// that two folders never import each other through different files.
fn top_level(edges: &BTreeMap<String, BTreeMap<String, String>>) -> BTreeMap<String, BTreeMap<String, String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (a, targets) in edges {
        let ta = top(a);
        out.entry(ta.clone()).or_default();
        for (b, example) in targets {
            let tb = top(b);
            if tb != ta {
                out.entry(ta.clone()).or_default().entry(tb).or_insert_with(|| format!("{} uses {example}", name(a)));
            }
        }
    }
    out
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = top_level(&graph(&src));
    let found = cycles(&edges);
    let mut report = String::new();
    for comp in &found {
        report.push_str(&format!("cycle among {{{}}}:\n", comp.iter().map(|m| name(m)).collect::<Vec<_>>().join(", ")));
        for a in comp {
            for (b, example) in &edges[a] {
                if comp.contains(b) {
                    report.push_str(&format!("  {} -> {} ({example})\n", name(a), name(b)));
                }
            }
        }
    }
    assert!(found.is_empty(), "top-level modules of src/ import each other:\n{report}");
}

#[test]
fn the_checker_sees_cycles_and_use_trees() {
    let t = tokens(&code_of("use crate::{a::{B, c::D}, e}; // crate::x\nfn f() { super::g::h(); }"));
    let mut out = Vec::new();
    let i = t.iter().position(|x| x == "crate").unwrap();
    expand(&t, i, vec![], &mut out);
    let joined: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["crate::a::B", "crate::a::c::D", "crate::e"]);
    assert!(!t.contains(&"x".to_owned()), "comments are not code");
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into(), "crate::b".into());
    edges.entry("b".into()).or_default().insert("a".into(), "crate::a".into());
    edges.entry("c".into()).or_default().insert("a".into(), "crate::a".into());
    assert_eq!(cycles(&edges), vec![vec!["a".to_owned(), "b".to_owned()]]);
}
