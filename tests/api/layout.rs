//! The code's layout: no module of `src/` imports one that imports it back,
//! directly or through others, so each can be read from the bottom up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`http::orders`, `""` for the crate root) → its file's text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, into: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, into);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts[0] == "bin" {
                continue;
            }
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            into.insert(parts.join("::"), code_only(&text));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    walk(&root, &root, &mut modules);
    modules
}

/// The text without comments, string and char literals, and without the
/// unit tests at the end (`#[cfg(test)] mod tests`).
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = |n: usize| chars.get(i + n).copied();
        match chars[i] {
            '/' if rest(1) == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if rest(1) == Some('*') => {
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            'r' if rest(1) == Some('#') && rest(2) == Some('"') => {
                i += 3;
                while i + 1 < chars.len() && !(chars[i] == '"' && chars[i + 1] == '#') {
                    i += 1;
                }
                i += 2;
                out.push_str("\"\"");
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' if rest(1) == Some('\\') || rest(2) == Some('\'') => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("' '");
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path in `code` that starts at `crate`, `super` or `self`, or at one
/// of `children`, with `use` groups (`a::{b, c::d}`) expanded.
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut found = vec![];
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == ':');
        if starts_word && is_ident(bytes[i]) {
            let word: String = bytes[i..].iter().take_while(|c| is_ident(**c)).collect();
            let after = i + word.chars().count();
            let anchored =
                matches!(word.as_str(), "crate" | "super" | "self") || children.contains(&word);
            if anchored && bytes.get(after) == Some(&':') && bytes.get(after + 1) == Some(&':') {
                let (end, mut expanded) = path_at(&bytes, i);
                found.append(&mut expanded);
                i = end;
                continue;
            }
            i = after;
            continue;
        }
        i += 1;
    }
    found
}

/// The path (or `use` group) starting at `at`: where it ends, and each path.
fn path_at(code: &[char], mut at: usize) -> (usize, Vec<Vec<String>>) {
    let mut prefix = vec![];
    loop {
        while code.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if code.get(at) == Some(&'{') {
            let mut all = vec![];
            at += 1;
            loop {
                while code.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    at += 1;
                }
                match code.get(at) {
                    None => return (at, all),
                    Some('}') => return (at + 1, all),
                    _ => {}
                }
                let (end, inner) = path_at(code, at);
                at = end.max(at + 1);
                for path in inner {
                    all.push(prefix.iter().cloned().chain(path).collect());
                }
            }
        }
        let word: String = code[at..].iter().take_while(|c| is_ident(**c)).collect();
        if word.is_empty() {
            return (at, vec![prefix]);
        }
        at += word.chars().count();
        prefix.push(word);
        if code.get(at) == Some(&':') && code.get(at + 1) == Some(&':') {
            at += 2;
        } else {
            return (at, vec![prefix]);
        }
    }
}

/// The file module a path found in `module` names: the longest prefix that
/// is one.
fn resolve(module: &str, path: &[String], modules: &BTreeMap<String, String>) -> Option<String> {
    let mut full: Vec<String> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").map(String::from).collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            full.clear();
            rest = &rest[1..];
        }
        _ => {
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        full.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
    }
    full.extend(rest.iter().cloned());
    (0..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let children: BTreeSet<String> = modules
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|child| !child.is_empty() && !child.contains("::"))
            .map(String::from)
            .collect();
        let imported: BTreeSet<String> = paths(code, &children)
            .iter()
            .filter_map(|path| {
                let anchored = matches!(path[0].as_str(), "crate" | "super" | "self");
                let path: Vec<String> = if anchored {
                    path.clone()
                } else {
                    std::iter::once("self".to_string())
                        .chain(path.iter().cloned())
                        .collect()
                };
                resolve(module, &path, &modules)
            })
            .filter(|m| m != module)
            .collect();
        graph.insert(module.clone(), imported);
    }
    graph
}

/// A loop through `from`, if there is one: the modules on it.
fn loop_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, way)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == from {
                return Some(way);
            }
            if seen.insert(next.clone()) {
                let mut way = way.clone();
                way.push(next.clone());
                stack.push((next.clone(), way));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    // The reader itself: these are imports it must see.
    assert!(graph["app"].contains("http"), "{:?}", graph["app"]);
    assert!(
        graph["http"].contains("http::orders"),
        "{:?}",
        graph["http"]
    );
    assert!(graph["http::api_keys"].contains("auth"));
    assert!(graph["delivery::fan_out"].contains("db"));
    let loops: Vec<String> = graph
        .keys()
        .filter_map(|m| loop_through(&graph, m))
        .map(|way| way.join(" -> "))
        .collect();
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_reader_finds_grouped_nested_and_child_imports() {
    let children = BTreeSet::from(["orders".to_string()]);
    let code = code_only(
        "use crate::a::{b, c::{d, e}};\n// crate::commented\nlet s = \"crate::quoted\";\nlet r = orders::router(); x::orders::no(); super::f();",
    );
    let found: Vec<String> = paths(&code, &children)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        found,
        [
            "crate::a::b",
            "crate::a::c::d",
            "crate::a::c::e",
            "orders::router",
            "super::f"
        ]
    );
}
