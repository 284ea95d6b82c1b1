//! The engine's layering, checked from its sources: `src/lib.rs` declares the top-level modules
//! bottom to top, and a module may use only the modules declared before it (and itself). Within a
//! module, its files must not import each other in a circle (a parent module and its children
//! aside), and all of the engine's `unsafe` code lives in the ring layer (`src/ring/`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, by its module path (`conn::slot`, `worker`, `lib`).
fn files() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}::"), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "mod" => prefix.trim_end_matches("::").to_owned(),
                    _ => format!("{prefix}{name}"),
                };
                out.insert(module, fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), "", &mut out);
    out
}

/// The code of `text` without comments and string literals (so that docs naming a module do not
/// count as uses), keeping only what lies outside `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            // A test module ends the file's code; a single test-only item is skipped.
            match lines.peek() {
                Some(next) if next.trim_start().starts_with("mod ") => break,
                _ => {
                    lines.next();
                    continue;
                }
            }
        }
        let line = line.split("//").next().unwrap_or("");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The modules named by `crate::a::b` paths in `code`, resolved to the longest existing file.
fn crate_uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut best = None;
        for n in 1..=segments.len() {
            let candidate = segments[..n].join("::");
            if modules.contains(&candidate) {
                best = Some(candidate);
            }
        }
        out.extend(best);
    }
    out
}

/// The top-level module of a module path.
fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let files = files();
    let lib = &files["lib"];
    let order: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(order.len() > 5, "lib.rs declares its modules with `mod x;`");
    let rank = |m: &str| order.iter().position(|o| *o == m);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut wrong = Vec::new();
    for (module, text) in &files {
        if module == "lib" {
            continue;
        }
        let Some(own) = rank(top(module)) else {
            wrong.push(format!("{module}: not declared in lib.rs"));
            continue;
        };
        for used in crate_uses(&code(text), &modules) {
            let Some(r) = rank(top(&used)) else { continue };
            if r > own {
                wrong.push(format!("{module} uses {used}, a layer above it"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn no_file_imports_form_a_circle() {
    let files = files();
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    // Edges between files, from `crate::` paths and `super::x` paths; parent <-> child edges are
    // left out (a module and its children are one unit).
    let related =
        |a: &str, b: &str| a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        let code = code(text);
        let mut used = crate_uses(&code, &modules);
        // `super::x` from `a::b` (a file) names `a::x`.
        if let Some((parent, _)) = module.rsplit_once("::") {
            let mut rest = code.as_str();
            while let Some(i) = rest.find("super::") {
                rest = &rest[i + "super::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let sibling = format!("{parent}::{name}");
                if modules.contains(&sibling) {
                    used.insert(sibling);
                }
            }
        }
        for u in used {
            if u != *module && !related(module, &u) && module != "lib" {
                edges.entry(module.clone()).or_default().insert(u);
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let at = path.iter().position(|p| p == m).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m.to_owned(), 1);
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in files.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!(
                "files import each other in a circle: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn unsafe_code_lives_only_in_the_ring_layer() {
    let mut outside = Vec::new();
    for (module, text) in files() {
        if top(&module) == "ring" {
            continue;
        }
        for (i, line) in code(&text).lines().enumerate() {
            let l = line.trim();
            if l.contains("unsafe ") || l.contains("unsafe{") {
                outside.push(format!("{module}:{}: {l}", i + 1));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "unsafe outside src/ring:\n{}",
        outside.join("\n")
    );
}

#[test]
fn every_unsafe_block_in_the_ring_layer_says_why() {
    let mut missing = Vec::new();
    for (module, text) in files() {
        if top(&module) != "ring" {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.split("//").next().unwrap_or("");
            let is_block = l.contains("unsafe {") || l.contains("unsafe{");
            let is_impl = l.contains("unsafe impl");
            if !(is_block || is_impl) {
                continue;
            }
            // The SAFETY comment sits in the lines just above the block (or its statement).
            let above = lines[i.saturating_sub(8)..i].join("\n");
            if !above.contains("SAFETY") && !line.contains("SAFETY") {
                missing.push(format!("{module}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe without a SAFETY comment:\n{}",
        missing.join("\n")
    );
}
