//! The layering of ARCHITECTURE.md, checked: this reads every file under
//! `src/` (test code left out), collects which top-level modules each
//! module names (`crate::x`, `crate::{x, y}`) and which of `axum` and
//! `http` it uses, and fails on a forbidden edge:
//!
//! - `core` imports nothing of the crate (it is below everything);
//! - `sa` imports only `core`, `config` and `clock`;
//! - `wire` (the ACME request and response types, shared by `wfe` and
//!   `ra`) imports only `core`;
//! - nothing below `wfe` (`ra`, `sa`, `ca`, `va`, `policy`, `ratelimit`,
//!   `wire`, `core`) uses `axum` or `http`: HTTP stays at the edge;
//! - no cycle between top-level modules.
//!
//! `KNOWN` lists the edges that break a rule today, each with the change
//! that removes it; an entry that no longer occurs fails the test too, so
//! the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const BELOW_WFE: [&str; 8] = [
    "ra",
    "sa",
    "ca",
    "va",
    "policy",
    "ratelimit",
    "wire",
    "core",
];
const SA_MAY_IMPORT: [&str; 3] = ["core", "config", "clock"];
const WIRE_MAY_IMPORT: [&str; 1] = ["core"];
const HTTP_CRATES: [&str; 2] = ["axum", "http"];

/// Forbidden edges that exist today: (from, to, why it is still there).
const KNOWN: &[(&str, &str, &str)] = &[];

#[derive(Default)]
struct Graph {
    /// module -> modules of the crate it names.
    uses: BTreeMap<String, BTreeSet<String>>,
    /// module -> external crates of `HTTP_CRATES` it uses, with a file that does.
    http: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// (module, target) -> a file where the edge occurs.
    witness: BTreeMap<(String, String), PathBuf>,
}

#[test]
fn module_imports_follow_the_layering() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = read_crate(&src);
    let problems = check(&graph);
    assert!(
        problems.is_empty(),
        "forbidden module edges:\n  {}",
        problems.join("\n  ")
    );
}

/// The check itself must see edges: a crate with none would pass
/// vacuously.
#[test]
fn the_reader_sees_the_crates_edges() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = read_crate(&src);
    let uses = |m: &str| g.uses.get(m).cloned().unwrap_or_default();
    assert!(uses("ra").contains("sa"), "{:?}", uses("ra"));
    assert!(uses("sa").contains("core"), "{:?}", uses("sa"));
    assert!(uses("wfe").contains("ra"), "{:?}", uses("wfe"));
    assert!(g.http.get("wfe").is_some_and(|h| h.contains_key("axum")));
}

/// The reader on small inputs: grouped imports, inline paths, comments,
/// strings and test modules.
#[test]
fn reader_parses_paths_and_skips_tests_comments_and_strings() {
    let code = r#"
        use crate::{core::Order, config::{self, Config}};
        use crate::clock::Clock; // crate::wfe in a comment
        /* crate::ra in a block comment */
        fn f() -> axum::http::StatusCode { let _ = "crate::admin http::x"; todo!() }
        fn g() { let _ = http::Method::GET; let _ = tower_http::x; let _ = hyper::http::y; }
        #[cfg(test)]
        mod tests { use crate::wfe; }
    "#;
    let (mods, http) = scan(code);
    assert_eq!(
        mods.into_iter().collect::<Vec<_>>(),
        ["clock", "config", "core"]
    );
    assert_eq!(http.into_iter().collect::<Vec<_>>(), ["axum", "http"]);
}

fn check(g: &Graph) -> Vec<String> {
    let mut forbidden: Vec<(String, String, String)> = Vec::new();
    let mut edge = |from: &str, to: &str, rule: &str| {
        let file = g
            .witness
            .get(&(from.to_string(), to.to_string()))
            .or_else(|| g.http.get(from).and_then(|h| h.get(to)))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        forbidden.push((from.into(), to.into(), format!("{rule} ({file})")));
    };
    for (from, tos) in &g.uses {
        for to in tos {
            if from == "core" {
                edge(from, to, "core imports nothing of the crate");
            }
            if from == "sa" && !SA_MAY_IMPORT.contains(&to.as_str()) {
                edge(from, to, "sa imports only core, config and clock");
            }
            if from == "wire" && !WIRE_MAY_IMPORT.contains(&to.as_str()) {
                edge(from, to, "wire imports only core");
            }
        }
    }
    for (from, crates) in &g.http {
        if BELOW_WFE.contains(&from.as_str()) {
            for c in crates.keys() {
                edge(from, c, "no HTTP below wfe");
            }
        }
    }
    let mut problems = Vec::new();
    let mut seen_known = BTreeSet::new();
    for (from, to, why) in forbidden {
        match KNOWN.iter().position(|(f, t, _)| *f == from && *t == to) {
            Some(i) => {
                seen_known.insert(i);
            }
            None => problems.push(format!("{from} -> {to}: {why}")),
        }
    }
    for (i, (f, t, _)) in KNOWN.iter().enumerate() {
        if !seen_known.contains(&i) {
            problems.push(format!(
                "{f} -> {t} is gone: remove it from KNOWN in tests/architecture.rs"
            ));
        }
    }
    for cycle in cycles(&g.uses) {
        problems.push(format!("cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// Every elementary cycle found by a depth-first search from each module,
/// reported once (by its smallest rotation).
fn cycles(uses: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    fn dfs(
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        let last = path.last().cloned().unwrap_or_default();
        for next in uses.get(&last).into_iter().flatten() {
            if let Some(i) = path.iter().position(|m| m == next) {
                let mut c: Vec<String> = path[i..].to_vec();
                let min = (0..c.len()).min_by_key(|&k| &c[k]).unwrap_or(0);
                c.rotate_left(min);
                c.push(c[0].clone());
                found.insert(c);
            } else if path.len() < 12 {
                path.push(next.clone());
                dfs(uses, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for m in uses.keys() {
        dfs(uses, &mut vec![m.clone()], &mut found);
    }
    found
}

fn read_crate(src: &Path) -> Graph {
    let mut g = Graph::default();
    let mut files = Vec::new();
    walk(src, &mut files);
    assert!(files.len() > 20, "read only {} files of src/", files.len());
    let test_only = test_only_files(&files);
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let module = match rel.components().next() {
            Some(c) => c
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string(),
            None => continue,
        };
        // The crate root and the binary wire everything together.
        if module == "lib" || module == "main" || test_only.contains(&file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let (mods, http) = scan(&text);
        for m in mods {
            if m != module {
                g.witness
                    .entry((module.clone(), m.clone()))
                    .or_insert_with(|| rel.to_path_buf());
                g.uses.entry(module.clone()).or_default().insert(m);
            }
        }
        for c in http {
            g.http
                .entry(module.clone())
                .or_default()
                .entry(c)
                .or_insert_with(|| rel.to_path_buf());
        }
        g.uses.entry(module).or_default();
    }
    g
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files declared as `#[cfg(test)] mod name;`.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = strip_comments_and_strings(&std::fs::read_to_string(f).expect("readable"));
        let dir = if f
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
        {
            f.parent().map(Path::to_path_buf)
        } else {
            f.parent()
                .map(|p| p.join(f.file_stem().expect("a file name")))
        };
        let Some(dir) = dir else { continue };
        let mut rest = text.as_str();
        while let Some(i) = rest.find("#[cfg(test)]") {
            rest = &rest[i + "#[cfg(test)]".len()..];
            let item = rest.trim_start();
            if let Some(decl) = item.strip_prefix("mod ") {
                let name: String = decl
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if decl[name.len()..].trim_start().starts_with(';') {
                    out.insert(dir.join(format!("{name}.rs")));
                    out.insert(dir.join(&name).join("mod.rs"));
                }
            }
        }
    }
    out
}

/// The crate's modules a source text names, and the HTTP crates it uses.
fn scan(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let code = drop_test_items(&strip_comments_and_strings(text));
    let mut mods = BTreeSet::new();
    let mut http = BTreeSet::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        // A path's first segment: not preceded by an identifier or `::`.
        // (`::http::x` is one; `hyper::http::x` is not).
        let prev = if i == 0 { b' ' } else { bytes[i - 1] };
        let starts_path = if prev == b':' {
            i >= 2 && bytes[i - 2] == b':' && (i < 3 || !is_ident(bytes[i - 3]))
        } else {
            !is_ident(prev)
        };
        if !starts_path || !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&k| !is_ident(bytes[k]))
            .unwrap_or(bytes.len());
        let word = &code[i..end];
        if let Some(rest) = code[end..].strip_prefix("::") {
            if word == "crate" {
                if let Some(group) = rest.strip_prefix('{') {
                    for m in top_level_names(group) {
                        mods.insert(m);
                    }
                } else {
                    let name: String = rest.chars().take_while(|c| is_ident(*c as u8)).collect();
                    if !name.is_empty() {
                        mods.insert(name);
                    }
                }
            } else if HTTP_CRATES.contains(&word) {
                http.insert(word.to_string());
            }
        }
        i = end;
    }
    (mods, http)
}

/// The first segments of a `{a::b, c, d::{e}}` group (up to its `}`).
fn top_level_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut at_start = true;
    let mut word = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_start = true,
            c if c.is_alphanumeric() || c == '_' => {
                if at_start && depth == 0 {
                    word.push(c);
                }
                continue;
            }
            _ => {}
        }
        if !word.is_empty() {
            names.push(std::mem::take(&mut word));
            at_start = c == ',';
        }
    }
    if !word.is_empty() {
        names.push(word);
    }
    names
}

/// Removes the item after each `#[cfg(test)]` (an inline test module, a
/// test-only function or import).
fn drop_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        rest = &rest[i + "#[cfg(test)]".len()..];
        let brace = rest.find('{');
        let semi = rest.find(';');
        match (brace, semi) {
            (Some(b), Some(s)) if s < b => rest = &rest[s + 1..],
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = rest.len();
                for (k, c) in rest[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &rest[end..];
            }
            (None, Some(s)) => rest = &rest[s + 1..],
            (None, None) => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Blanks out comments, string and character literals (raw strings too),
/// keeping everything else.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(b' ');
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            j += 1;
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.extend_from_slice(b"\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            out.extend_from_slice(b"' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            let mut j = i + 2;
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.extend_from_slice(b"' '");
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
