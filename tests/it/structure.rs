//! The source tree keeps its shape: the folders of `src/` are the parts, in a fixed order
//! from the top of the pipeline down, and each imports only the parts after it; inside the
//! pipeline the stages do the same. So a change finds one place to go from the folder names
//! alone, and no module needs a part above it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The unit a source file belongs to at `depth` path components: at 1, its folder (or root
/// file); at 2, `pipeline/front.rs` is `pipeline::front` and `pipeline/mod.rs` is `pipeline`.
fn unit_of(src: &Path, file: &Path, depth: usize) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .take(depth)
        .collect();
    let name = parts.join("::");
    (name != "lib" && name != "main").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The unit a `crate::a::b::…` reference names: the longest prefix (up to `depth`
/// segments) that is a unit.
fn referenced(rest: &str, depth: usize, units: &BTreeSet<String>) -> Option<String> {
    let segments: Vec<String> = rest
        .split("::")
        .take(depth)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|name| units.contains(name))
}

/// `crate::NAME` references in code (comments and doc links left out), by unit.
fn import_graph(src: &Path, depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let units: BTreeSet<String> = files
        .iter()
        .filter_map(|f| unit_of(src, f, depth))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = unit_of(src, file, depth) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for line in text.lines().map(str::trim_start) {
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                if let Some(name) = referenced(rest, depth, &units) {
                    if name != from {
                        edges.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one, as the list of modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn src_modules_import_each_other_in_one_direction_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src, 1);
    assert!(graph.len() > 10, "too few parts found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle among src/ modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("server".into()).or_default().insert("front".into());
    g.entry("front".into())
        .or_default()
        .insert("upgrade".into());
    g.entry("upgrade".into())
        .or_default()
        .insert("front".into());
    let cycle = find_cycle(&g).expect("a cycle");
    assert_eq!(cycle, ["front", "upgrade", "front"]);
}

/// The parts of `src/`, from the top down: each folder (or root file) may import only the
/// parts after it. A new folder must be placed here.
const PARTS: &[&str] = &[
    "cli",
    "dev",
    "runtime",
    "ops",
    "pipeline",
    "gateway",
    "routing",
    "upstreams",
    "rate_limit",
    "metrics",
    "logging",
    "config",
    "tls",
    "protocol",
    "relay",
    "keys",
    "drain",
    "error",
];

/// Every import of a part above the importer (or of a part in no place of `parts`), and
/// every part that has no place, as one line each.
fn out_of_order(graph: &BTreeMap<String, BTreeSet<String>>, parts: &[&str]) -> Vec<String> {
    let place = |p: &str| parts.iter().position(|q| *q == p);
    let mut wrong = Vec::new();
    for (part, imports) in graph {
        let Some(at) = place(part) else {
            wrong.push(format!("src/{part} has no place in PARTS"));
            continue;
        };
        for import in imports {
            if place(import).is_none_or(|below| below <= at) {
                wrong.push(format!("{part} imports {import}, a part above it"));
            }
        }
    }
    wrong
}

#[test]
fn the_folders_import_only_the_parts_after_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src, 1);
    let wrong = out_of_order(&graph, PARTS);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        graph.len(),
        PARTS.len(),
        "a part of PARTS is gone from src/"
    );
}

#[test]
fn the_order_check_finds_an_import_upwards() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("pipeline".into())
        .or_default()
        .insert("relay".into());
    g.entry("relay".into())
        .or_default()
        .insert("pipeline".into());
    g.entry("extra".into()).or_default();
    assert_eq!(
        out_of_order(&g, &["pipeline", "relay"]),
        [
            "src/extra has no place in PARTS",
            "relay imports pipeline, a part above it"
        ]
    );
}

#[test]
fn the_pipeline_stages_know_only_the_stages_after_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src, 2);
    let stages = [
        "pipeline::accept",
        "pipeline::front_h2",
        "pipeline::front",
        "pipeline::upgrade",
        "pipeline::connection",
        "relay::pump",
    ];
    for (i, stage) in stages.iter().enumerate() {
        for earlier in &stages[..i] {
            assert!(
                !graph[*stage].contains(*earlier),
                "{stage} imports {earlier}, a stage before it"
            );
        }
    }
    // The state every stage reads depends on no stage.
    for shared in ["gateway", "pipeline::answer", "config", "metrics", "drain"] {
        for stage in &stages[..5] {
            assert!(
                !graph[shared].contains(*stage),
                "{shared} (shared state) imports the stage {stage}"
            );
        }
    }
}

/// The longest body a function in `src/` may have, in lines from `fn` to its closing brace:
/// past it a function mixes steps that read better named.
const LONGEST_FUNCTION: usize = 120;

/// Every function of `text` with a body, as (name, lines from `fn` to its closing brace).
/// rustfmt's layout makes this exact: a body closes on a line holding only `}` at the
/// indentation its `fn` line has.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let Some(at) = body.find("fn ") else {
            continue;
        };
        let before = &body[..at];
        let is_fn = before
            .split_whitespace()
            .all(|w| w.starts_with("pub") || ["const", "async", "unsafe"].contains(&w));
        if !is_fn || body.starts_with("//") {
            continue;
        }
        let name: String = body[at + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // The signature ends at the first line ending in `{` (a body), `;` (a declaration)
        // or `}` (a body on one line).
        let Some(open) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == close) {
            out.push((name, end - i + 1));
        }
    }
    out
}

#[test]
fn no_function_in_src_is_longer_than_the_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    let mut counted = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (name, n) in function_lengths(&text) {
            counted += 1;
            if n > LONGEST_FUNCTION {
                let rel = file.strip_prefix(&src).unwrap().display();
                long.push(format!("{rel}: {name} is {n} lines"));
            }
        }
    }
    assert!(counted > 500, "too few functions found: {counted}");
    assert!(
        long.is_empty(),
        "over {LONGEST_FUNCTION} lines, split into named steps:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_measures_bodies_and_skips_declarations() {
    let text = "trait T {\n    fn declared(&self);\n}\n\npub(crate) async fn f(\n    a: u8,\n) -> u8 {\n    a\n}\nfn g() {}\n";
    assert_eq!(function_lengths(text), [("f".to_string(), 5)]);
}
