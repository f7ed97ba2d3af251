//! The code reads one way: no module of `src/` imports one that imports it
//! back, neither file by file nor folder by folder (`commands` uses the
//! stages, an operation uses the stages, a stage never uses them back).
//! Read from the sources' `crate::` and `super::` paths (braces expanded;
//! a module and the folder it is in do not count; test modules left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of `src/` ("apply::batch", "cli", ...) and its text.
fn modules() -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            // Test modules may reach anywhere.
            let text = match text.find("#[cfg(test)]\nmod ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), text);
        }
    }
    let mut out = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    walk(&src, &src, &mut out);
    out
}

/// The paths after `crate::` / `super::` at `at` in `text`, braces
/// expanded: `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn paths(text: &[u8], mut at: usize) -> Vec<Vec<String>> {
    let mut prefix: Vec<String> = Vec::new();
    loop {
        let start = at;
        while at < text.len() && (text[at].is_ascii_alphanumeric() || text[at] == b'_') {
            at += 1;
        }
        if at > start {
            prefix.push(String::from_utf8_lossy(&text[start..at]).into_owned());
        }
        let group = if text[at..].starts_with(b"::{") {
            3
        } else if text[at..].starts_with(b"{") {
            1
        } else {
            0
        };
        if group > 0 {
            // A group: each member is a path of its own.
            at += group;
            let mut out = Vec::new();
            let mut depth = 0;
            let mut member = at;
            while at < text.len() {
                match text[at] {
                    b'{' => depth += 1,
                    b'}' if depth == 0 => break,
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        for p in paths(text, skip_space(text, member)) {
                            out.push([prefix.clone(), p].concat());
                        }
                        member = at + 1;
                    }
                    _ => {}
                }
                at += 1;
            }
            for p in paths(text, skip_space(text, member)) {
                out.push([prefix.clone(), p].concat());
            }
            return out;
        }
        if text[at..].starts_with(b"::") {
            at += 2;
            continue;
        }
        return vec![prefix];
    }
}

fn skip_space(text: &[u8], mut at: usize) -> usize {
    while at < text.len() && text[at].is_ascii_whitespace() {
        at += 1;
    }
    at
}

/// Module -> the modules it imports (not its own folder or submodules).
fn imports(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, text) in mods {
        let here: Vec<&str> = name.split("::").collect();
        let bytes = text.as_bytes();
        let mut edges = BTreeSet::new();
        for kw in ["crate::", "super::"] {
            let mut from = 0;
            while let Some(i) = text[from..].find(kw) {
                let at = from + i;
                from = at + kw.len();
                let before = at.checked_sub(1).map(|b| bytes[b]);
                if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                    continue;
                }
                // `super::super::…` climbs one folder more each time.
                let mut base = if kw == "crate::" { 0 } else { here.len() - 1 };
                while kw == "super::" && text[from..].starts_with(kw) {
                    base = base.saturating_sub(1);
                    from += kw.len();
                }
                for p in paths(bytes, from) {
                    let full: Vec<&str> = here[..base]
                        .iter()
                        .copied()
                        .chain(p.iter().map(String::as_str))
                        .collect();
                    // The longest prefix that is a module.
                    if let Some(m) = (1..=full.len())
                        .rev()
                        .map(|k| full[..k].join("::"))
                        .find(|m| mods.contains_key(m))
                    {
                        let related = m == *name
                            || name.starts_with(&format!("{m}::"))
                            || m.starts_with(&format!("{name}::"));
                        if !related {
                            edges.insert(m);
                        }
                    }
                }
            }
        }
        graph.insert(name.clone(), edges);
    }
    graph
}

/// The circles of `graph`: each strongly connected part of two or more.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for a in graph.keys() {
        if done.contains(a) {
            continue;
        }
        let part: Vec<String> = graph
            .keys()
            .filter(|b| *b != a && reached[a].contains(*b) && reached[*b].contains(a))
            .cloned()
            .collect();
        if !part.is_empty() {
            let mut part = [vec![a.clone()], part].concat();
            part.sort();
            done.extend(part.iter().cloned());
            out.push(part);
        }
    }
    out
}

/// The graph of the top-level folders the modules are in.
fn by_folder(files: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |s: &str| s.split("::").next().unwrap_or(s).to_string();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, edges) in files {
        let entry = folders.entry(top(m)).or_default();
        entry.extend(edges.iter().map(|e| top(e)).filter(|e| *e != top(m)));
    }
    folders
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules();
    assert!(mods.contains_key("apply::batch"), "src/ was read");
    let files = imports(&mods);
    // The reader must see real edges (braces included), or it proves nothing.
    assert!(
        files["snapshot::post"].contains("snapshot::copy"),
        "{:?}",
        files["snapshot::post"]
    );
    assert!(files["commands::server"].contains("commands::sync"));
    let found = circles(&files);
    assert!(found.is_empty(), "files importing each other: {found:?}");

    let folders = by_folder(&files);
    let found = circles(&folders);
    assert!(found.is_empty(), "folders importing each other: {found:?}");
}

#[test]
fn a_circle_is_found() {
    // The checker itself: two modules importing each other are a circle.
    let mut mods = BTreeMap::new();
    mods.insert("a".to_string(), "use crate::b::{X, c::Y};".to_string());
    mods.insert("b".to_string(), "fn f() { super::a::g() }".to_string());
    mods.insert("b::c".to_string(), String::new());
    // And one through `super::super::super` (from b/c/d.rs to the root).
    mods.insert(
        "b::c::d".to_string(),
        "use super::super::super::e;".to_string(),
    );
    mods.insert(
        "e".to_string(),
        "fn f() { crate::b::c::d::g() }".to_string(),
    );
    let graph = imports(&mods);
    assert_eq!(
        circles(&graph),
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["b::c::d".to_string(), "e".to_string()]
        ]
    );
    // Folders: b (with b::c::d) and e import each other; a with b too.
    assert_eq!(
        circles(&by_folder(&graph)),
        vec![vec!["a".to_string(), "b".to_string(), "e".to_string()]]
    );
}
