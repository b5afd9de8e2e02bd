//! The code's shape, as the restructure left it (issue "one home for each idea"): the mount
//! does not link the daemon, no file of the mount's crate outgrows what a reader can hold, and
//! no crate's modules import each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_mount_does_not_link_the_daemon() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["-p", "cairn-fs"])
        .current_dir(workspace())
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("cairn-node"), "{tree}");
    assert!(
        !tree.lines().any(|l| l.starts_with("cairn-syncd")),
        "cairn-fs depends on cairn-syncd:\n{tree}"
    );
}

#[test]
fn no_file_of_the_mount_is_over_800_lines() {
    let src = workspace().join("fs/src");
    let long: Vec<String> = rust_files(&src)
        .iter()
        .map(|p| (p, std::fs::read_to_string(p).unwrap().lines().count()))
        .filter(|(_, n)| *n > 800)
        .map(|(p, n)| format!("{} ({n} lines)", p.display()))
        .collect();
    assert!(long.is_empty(), "{long:?}");
}

/// For each top-level module of the crate at `src`, the other top-level modules its code
/// (not its comments, not its tests) names through `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_owned()
    };
    let files = rust_files(src);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| top(p))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for p in &files {
        let me = top(p);
        if !modules.contains(&me) {
            continue;
        }
        let text = std::fs::read_to_string(p).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c}`: the first name of each item.
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    named.insert(ident(item.trim()));
                }
            } else {
                named.insert(ident(rest));
            }
        }
        for m in named {
            if m != me && modules.contains(&m) {
                graph.get_mut(&me).unwrap().insert(m);
            }
        }
    }
    graph
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The modules on a cycle of `graph`, if any (each found by a walk back to itself).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in graph.keys() {
        // Breadth-first from `start`, remembering how each module was reached.
        let mut from: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(m) = queue.pop_front() {
            for next in &graph[m] {
                if next == start {
                    let mut path = vec![m.clone()];
                    let mut at = m;
                    while at != start {
                        at = from[at];
                        path.push(at.clone());
                    }
                    path.reverse();
                    found.push(path);
                    queue.clear();
                    break;
                }
                if !from.contains_key(next) && next != start {
                    from.insert(next, m);
                    queue.push_back(next);
                }
            }
        }
    }
    found
}

#[test]
fn no_crate_has_modules_that_import_each_other_in_a_cycle() {
    let root = workspace();
    for krate in [
        "catalog/src",
        "fs/src",
        "syncd/src",
        "syncd/node/src",
        "tools/src",
        "tests/src",
    ] {
        let graph = module_graph(&root.join(krate));
        assert!(
            graph.len() > 1 || krate == "tests/src",
            "{krate}: {graph:?}"
        );
        let found = cycles(&graph);
        assert!(found.is_empty(), "{krate}: modules in a cycle: {found:?}");
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert!(cycles(&g(&[("a", "b"), ("b", "c")])).is_empty());
    let found = cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
    assert_eq!(found[0], vec!["a", "b", "c"]);
}
