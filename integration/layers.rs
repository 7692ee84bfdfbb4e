//! The crate's structure as lib.rs's docs state it: the layers (every module in its place, and
//! none importing from a layer above it), no import cycle among the top-level modules, and the
//! no-panic lint block on the modules its "Lint policy" lists.
//!
//! Reads every file under `src/`, takes the `crate::module` paths its code names (comments and
//! `#[cfg(test)]` parts left out) as edges from the file's top-level module, and fails naming
//! each import from above, or a cycle. `cargo modules dependencies` (crate cargo-modules) draws
//! the same graph; this checks it in every test run without installing it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let first = rel.iter().next().unwrap().to_str().unwrap();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for part in line.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.entry(module.clone()).or_default().insert(name);
                }
            }
        }
    }
    deps
}

/// A cycle through `node`, if the graph has one reachable from it.
fn cycle(
    deps: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|n| n == node) {
        let mut c = path[i..].to_vec();
        c.push(node.to_string());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in deps.get(node).into_iter().flatten() {
        if let Some(c) = cycle(deps, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

/// lib.rs's "Layers": each module's place, 0 at the top; peers share one. `main` (the binary,
/// not a module of the library) is left out.
fn places(lib: &str) -> BTreeMap<String, usize> {
    let after = lib
        .split("//! ## Layers")
        .nth(1)
        .expect("lib.rs has a Layers section");
    let block = after
        .split("//! ```text")
        .nth(1)
        .and_then(|b| b.split("//! ```").next())
        .expect("the Layers section draws them in a text block");
    let mut places = BTreeMap::new();
    let mut place = 0;
    for line in block.lines().map(|l| l.trim_start_matches("//!").trim()) {
        // The names, then two spaces or more, then what the row is.
        let names = line.split("  ").next().unwrap_or("");
        if names.is_empty() {
            continue;
        }
        for group in names.split('→') {
            for name in group.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let earlier = places.insert(name.to_string(), place);
                assert!(earlier.is_none(), "lib.rs's Layers lists `{name}` twice");
            }
            place += 1;
        }
    }
    places.remove("main");
    places
}

/// The `src/` folder, and lib.rs's text (where the layers and the lint policy are written).
fn src_and_lib() -> (std::path::PathBuf, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    (src, lib)
}

#[test]
fn modules_import_only_from_their_place_or_below_as_lib_rs_draws_them() {
    let (src, lib) = src_and_lib();
    let places = places(&lib);
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if path.is_dir() || name.ends_with(".rs") {
            modules.insert(name.trim_end_matches(".rs").to_string());
        }
    }
    modules.remove("lib");
    modules.remove("main");
    let listed: BTreeSet<String> = places.keys().cloned().collect();
    assert_eq!(listed, modules, "lib.rs's Layers and the modules of src/");
    let mut above = Vec::new();
    for (module, deps) in graph() {
        for dep in deps {
            let (from, to) = (
                places[&module],
                places.get(&dep).copied().unwrap_or(usize::MAX),
            );
            if to < from {
                above.push(format!("{module} imports {dep}, a layer above it"));
            }
        }
    }
    assert!(above.is_empty(), "{}", above.join("\n"));
}

#[test]
fn top_level_modules_import_without_cycles() {
    let deps = graph();
    assert!(deps.len() >= 10, "too few modules read: {deps:?}");
    let mut done = BTreeSet::new();
    for node in deps.keys() {
        if let Some(c) = cycle(&deps, node, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

/// The lints a `#![cfg_attr(not(test), deny(…))]` at the top of `text` denies, if it has one.
fn denied_outside_tests(text: &str) -> Option<BTreeSet<String>> {
    let start = text.find("#![cfg_attr(")?;
    let rest = &text[start..];
    let block = &rest[..rest.find(")]")? + 2];
    if !block.contains("not(test)") || !block.contains("deny(") {
        return None;
    }
    let lints = block
        .split("clippy::")
        .skip(1)
        .map(|l| {
            l.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .collect();
    Some(lints)
}

/// lib.rs's "Lint policy": the no-panic lints, and for each module listed, the lints it must
/// deny (all of them, or all but the one its line excepts with "all but LINT").
fn no_panic_modules(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let lines: Vec<&str> = lib
        .lines()
        .map(|l| l.trim_start_matches("//!").trim())
        .collect();
    let all: BTreeSet<String> = lines
        .iter()
        .find_map(|l| l.strip_prefix("no-panic lints:"))
        .expect("lib.rs lists the no-panic lints")
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut modules = BTreeMap::new();
    for rest in lines.iter().filter_map(|l| l.strip_prefix("no-panic:")) {
        let module = rest.split_whitespace().next().unwrap().to_string();
        let mut lints = all.clone();
        if let Some((_, but)) = rest.split_once("all but ") {
            let except: String = but
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(
                lints.remove(&except),
                "{module}: `{except}` is no no-panic lint"
            );
        }
        modules.insert(module, lints);
    }
    modules
}

#[test]
fn the_no_panic_modules_carry_the_lint_block_lib_rs_lists() {
    let (src, lib) = src_and_lib();
    let listed = no_panic_modules(&lib);
    assert!(
        listed.len() >= 3,
        "too few no-panic modules listed: {listed:?}"
    );
    for (module, lints) in &listed {
        let root = [
            src.join(module).join("mod.rs"),
            src.join(format!("{module}.rs")),
        ]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no module `{module}`"));
        let text = std::fs::read_to_string(&root).unwrap();
        let denied = denied_outside_tests(&text)
            .unwrap_or_else(|| panic!("{}: no no-panic block", root.display()));
        assert_eq!(&denied, lints, "{}: the no-panic block", root.display());
    }
    // And no module carries the block without being listed.
    let mut all = Vec::new();
    files(&src, &mut all);
    for path in all {
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(denied) = denied_outside_tests(&text) else {
            continue;
        };
        if !denied.contains("unwrap_used") {
            continue;
        }
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel.iter().next().unwrap().to_str().unwrap();
        let module = module.trim_end_matches(".rs");
        let root = rel.components().count() == 1 || rel.ends_with("mod.rs");
        assert!(
            listed.contains_key(module) && root,
            "{} carries the no-panic block but lib.rs's Lint policy does not list it",
            rel.display()
        );
    }
}
