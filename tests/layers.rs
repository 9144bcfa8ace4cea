//! The module layering (issue 17): every `crate::<room>` (or `canaryd::<room>`) reference in
//! `src/` is an arrow between top-level modules ("rooms"). The test fails on an import circle
//! between rooms and on any arrow that points up against [`LAYERS`]. Comments and string literals
//! do not count. `cargo test --test layers -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A room may use rooms of its own layer (without a circle) and of layers below.
const LAYERS: &[(&str, &[&str])] = &[
    // The custom resources and the spec/status types they embed: plain data.
    ("resources", &["resources"]),
    // Leaves every layer may use: no daemon logic.
    (
        "foundation",
        &["hash", "failpoint", "fence", "http", "metrics", "telemetry"],
    ),
    // The pure core: no client, no clock.
    ("core", &["cron", "replicas", "analysis", "policy", "plan"]),
    // The edges: each talks to one outside system.
    (
        "edges",
        &[
            "write",
            "scale",
            "error",
            "mesh",
            "secrets",
            "prometheus",
            "health",
            "cache",
        ],
    ),
    // The services main.rs starts beside the controller.
    ("services", &["hooks", "approvals", "notify"]),
    ("controller", &["controller"]),
    ("binaries", &["cli", "main", "bin"]),
];

fn layer_of(room: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, rooms)| rooms.contains(&room))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The room a file belongs to: the first component under `src/` (lib.rs only declares them).
fn room_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    // A module's tests beside it (`cron_tests.rs`) belong to its room.
    let room = module.strip_suffix("_tests").unwrap_or(module);
    (room != "lib").then(|| room.to_string())
}

/// The code without comments, string and char literals (each replaced by a space).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (at(i + 1) == '"' || (at(i + 1) == '#' && !at(i.wrapping_sub(1)).is_alphanumeric())) {
            // A raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) is code.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_at(code: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < code.len() && (code[i].is_ascii_alphanumeric() || code[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&code[start..i]).into_owned(), i)
}

/// The rooms `code` names through `prefix::` (`crate::a::b`, `crate::{a, b::c}`).
fn rooms_named(code: &str, prefix: &str) -> BTreeSet<String> {
    let bytes = code.as_bytes();
    let needle = format!("{prefix}::");
    let mut rooms = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = code[from..].find(&needle) {
        let start = from + found;
        from = start + needle.len();
        let before = start.checked_sub(1).map(|b| bytes[b]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue; // e.g. `mycrate::`
        }
        let mut i = from;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'{') {
            // The first segment of each top-level item of the group.
            let mut depth = 0;
            let mut expect = true;
            while i < bytes.len() {
                match bytes[i] {
                    b'{' => {
                        depth += 1;
                        expect = depth == 1;
                        i += 1;
                    }
                    b'}' => {
                        depth -= 1;
                        i += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' => {
                        expect = depth == 1;
                        i += 1;
                    }
                    b if b.is_ascii_alphabetic() || b == b'_' => {
                        let (name, next) = ident_at(bytes, i);
                        if expect && depth == 1 {
                            rooms.insert(name);
                        }
                        expect = false;
                        i = next;
                    }
                    _ => i += 1,
                }
            }
        } else {
            let (name, _) = ident_at(bytes, i);
            if !name.is_empty() {
                rooms.insert(name);
            }
        }
    }
    rooms
}

/// Room → the rooms it uses (itself excluded), from the source under `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap_or(&file);
        let Some(room) = room_of(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let code = code_only(&text);
        let mut used = rooms_named(&code, "crate");
        if room == "main" || room == "bin" {
            used.extend(rooms_named(&code, "canaryd"));
        }
        // `crate::Result`, `crate::Error` are the error room's re-exports; `self` is no room.
        let used: BTreeSet<String> = used
            .into_iter()
            .map(|r| match r.as_str() {
                "Result" | "Error" => "error".to_string(),
                _ => r,
            })
            .filter(|r| r != "self" && *r != room)
            .collect();
        graph.entry(room).or_default().extend(used);
    }
    graph
}

/// Each circle once, as a path that returns to its start.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        // Depth-first search for paths from `start` back to it through rooms ordered after it
        // (the smallest room of a circle finds it, so each is reported once).
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    circle.push(start.clone());
                    found.insert(circle);
                } else if next > start && !path.contains(next) && path.len() < 8 {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    found.into_iter().collect()
}

fn problems(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (from, tos) in graph {
        let Some(lf) = layer_of(from) else {
            out.push(format!("room {from} is in no layer of LAYERS"));
            continue;
        };
        for to in tos {
            match layer_of(to) {
                None if graph.contains_key(to) => {} // said once, as `from`
                None => out.push(format!("room {to} (used by {from}) is in no layer of LAYERS")),
                Some(lt) if lt > lf => out.push(format!(
                    "{from} ({}) -> {to} ({}) points up",
                    LAYERS[lf].0, LAYERS[lt].0
                )),
                Some(_) => {}
            }
        }
    }
    for circle in circles(graph) {
        out.push(format!("circle: {}", circle.join(" -> ")));
    }
    out
}

fn show(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut text = String::new();
    for (layer, rooms) in LAYERS.iter().rev() {
        for room in rooms.iter() {
            if let Some(tos) = graph.get(*room) {
                let tos: Vec<&str> = tos.iter().map(String::as_str).collect();
                text.push_str(&format!("{layer:>10}  {room:<10} -> {}\n", tos.join(", ")));
            }
        }
    }
    for room in graph.keys().filter(|r| layer_of(r).is_none()) {
        text.push_str(&format!("   (none)  {room}\n"));
    }
    text
}

#[test]
fn rooms_form_layers_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    println!("{}", show(&graph));
    let problems = problems(&graph);
    assert!(
        problems.is_empty(),
        "the module layering is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_layering_check_sees_what_it_must() {
    let code = code_only(
        r##"use crate::{a::b, c::{d, e}, self};
           // crate::commented
           let s = "crate::quoted"; let c = '"'; fn f<'a>(x: &'a str) { crate::f::g(); }
           /* crate::blocked */ r#"crate::raw"#;"##,
    );
    let named: Vec<String> = rooms_named(&code, "crate").into_iter().collect();
    assert_eq!(named, ["a", "c", "f", "self"]);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("plan".into()).or_default().insert("controller".into());
    graph.entry("controller".into()).or_default().insert("plan".into());
    let found = problems(&graph);
    assert!(found.iter().any(|p| p.contains("points up")), "{found:?}");
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("circle: controller -> plan -> controller")),
        "{found:?}"
    );
}
