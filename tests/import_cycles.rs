//! No two source files import each other, directly or around a circle.
//!
//! Each file under `src/` is a node (`storage/load.rs` its own, `mod.rs` and `lib.rs` their
//! directory's module); an edge is a `use crate::…`, `use super::…` or `use self::…` item, or an
//! inline `crate::…` path, in the file's non-test code (up to its first `#[cfg(test)]`). A name
//! re-exported by a `mod.rs` counts as the file that defines it, and a `mod.rs`'s own
//! re-exports are not its dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

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

fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn is_facade(file: &Path) -> bool {
    matches!(
        file.file_name().and_then(|n| n.to_str()),
        Some("mod.rs" | "lib.rs")
    )
}

/// The file's non-test code without `//` comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `use` items of `code` (with `pub use` ones when `public`, else only the others).
fn use_items(code: &str, public: Option<bool>) -> Vec<String> {
    let mut items = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("use ") {
        let start = at + i;
        at = start + 4;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let is_pub = code[..start].trim_end().ends_with("pub")
            || code[..start].trim_end().ends_with("pub(crate)");
        let Some(end) = code[at..].find(';') else {
            break;
        };
        if public.is_none_or(|p| p == is_pub) {
            items.push(code[at..at + end].to_string());
        }
        at += end;
    }
    items
}

/// `a::{b, c::{d, e as f}}` as the paths it names.
fn expand(tree: &str) -> Vec<Module> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut parts, mut depth, mut from) = (Vec::new(), 0, 0);
        for (i, ch) in s.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[from..]);
        parts.into_iter().filter(|p| !p.is_empty()).collect()
    }
    fn segments(s: &str) -> Module {
        let s = s.split(" as ").next().unwrap();
        s.split("::")
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    }
    fn walk(prefix: &Module, s: &str, out: &mut Vec<Module>) {
        let s = s.trim();
        match s.find('{') {
            None => out.push([prefix.clone(), segments(s)].concat()),
            Some(open) => {
                let close = s.rfind('}').filter(|&c| c > open).unwrap_or(s.len());
                let head = [prefix.clone(), segments(&s[..open])].concat();
                for item in split_top(&s[open + 1..close]) {
                    walk(&head, item, out);
                }
            }
        }
    }
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    for item in split_top(&tree) {
        walk(&Vec::new(), item, &mut out);
    }
    out
}

struct Graph {
    files: BTreeMap<Module, PathBuf>,
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

impl Graph {
    fn of(root: &Path) -> Self {
        let mut paths = Vec::new();
        rust_files(root, &mut paths);
        let files: BTreeMap<Module, PathBuf> = paths
            .iter()
            .map(|p| (module_of(root, p), p.clone()))
            .collect();
        let mut reexports: BTreeMap<Module, Module> = BTreeMap::new();
        for (module, path) in &files {
            if !is_facade(path) {
                continue;
            }
            for item in use_items(&code(path), Some(true)) {
                for p in expand(&item) {
                    if !matches!(p[0].as_str(), "crate" | "super" | "self" | "std") {
                        let name = [module.clone(), vec![p.last().unwrap().clone()]].concat();
                        reexports.insert(name, [module.clone(), p].concat());
                    }
                }
            }
        }
        let resolve = |full: &[String]| -> Option<Module> {
            let file = (1..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|m| files.contains_key(m))?;
            let named = full.get(..=file.len()).map(<[String]>::to_vec);
            match named.and_then(|n| reexports.get(&n)) {
                Some(target) => (1..=target.len())
                    .rev()
                    .map(|n| target[..n].to_vec())
                    .find(|m| files.contains_key(m)),
                None => Some(file),
            }
        };
        let mut edges = BTreeMap::new();
        for (module, path) in &files {
            let code = code(path);
            let items = use_items(&code, (is_facade(path)).then_some(false));
            let mut deps = BTreeSet::new();
            let local = |i: &&String| {
                ["crate", "super", "self", "{"]
                    .iter()
                    .any(|head| i.trim_start().starts_with(head))
            };
            for p in items.iter().filter(local).flat_map(|i| expand(i)) {
                let full = match p[0].as_str() {
                    "crate" => p[1..].to_vec(),
                    "super" => [
                        module[..module.len().saturating_sub(1)].to_vec(),
                        p[1..].to_vec(),
                    ]
                    .concat(),
                    "self" => [module.clone(), p[1..].to_vec()].concat(),
                    _ => continue,
                };
                deps.extend(resolve(&full));
            }
            for (i, _) in code.match_indices("crate::") {
                if i > 0 && code.as_bytes()[i - 1].is_ascii_alphanumeric() {
                    continue;
                }
                let path: Module = code[i + 7..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap()
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                deps.extend(resolve(&path));
            }
            deps.remove(module);
            edges.insert(module.clone(), deps);
        }
        Self { files, edges }
    }

    fn reaches(&self, from: &Module, to: &Module) -> Option<Vec<Module>> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![vec![from.clone()]];
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            if last == to {
                return Some(path);
            }
            if !seen.insert(last.clone()) {
                continue;
            }
            for next in &self.edges[last] {
                stack.push([path.clone(), vec![next.clone()]].concat());
            }
        }
        None
    }

    /// Every edge that closes a circle, as the circle's files.
    fn cycles(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (from, deps) in &self.edges {
            for to in deps {
                if let Some(back) = self.reaches(to, from) {
                    let names: Vec<String> = std::iter::once(from)
                        .chain(&back)
                        .map(|m| self.files[m].display().to_string())
                        .collect();
                    found.push(names.join(" -> "));
                }
            }
        }
        found
    }
}

/// The crate's files import each other in one direction only.
#[test]
fn no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = Graph::of(&root);
    let storage_load = ["storage", "load"].map(String::from).to_vec();
    assert!(
        graph.edges[&storage_load].contains(&vec!["context".to_owned()]),
        "the graph sees storage/load.rs import context.rs"
    );
    let cycles = graph.cycles();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// Only `src/runtime/` names the Workers API (`worker::`, `js_sys`): the rest is plain Rust
/// the host tests drive. The check itself finds a planted use.
#[test]
fn only_the_runtime_names_the_workers_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names_it = |code: &str| {
        code.lines().any(|line| {
            let code = line.split("//").next().unwrap_or("");
            code.contains("worker::") || code.contains("js_sys")
        })
    };
    let mut files = vec![];
    rust_files(&root, &mut files);
    let runtime = root.join("runtime");
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(&runtime) && names_it(&std::fs::read_to_string(f).unwrap())),
        "the check sees the runtime's own uses"
    );
    let outside: Vec<_> = files
        .iter()
        .filter(|f| !f.starts_with(&runtime))
        .filter(|f| names_it(&std::fs::read_to_string(f).unwrap()))
        .collect();
    assert!(outside.is_empty(), "outside src/runtime/: {outside:?}");
    assert!(names_it("let v = js_sys::Array::new();") && !names_it("// worker::Env"));
}

/// The check finds a circle through `super::`, a re-export and an inline path.
#[test]
fn finds_a_planted_cycle() {
    let dir = std::env::temp_dir().join(format!("import-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("lib.rs", "pub mod ctx;\npub mod store;\n");
    write(
        "ctx.rs",
        "use crate::store::Policy;\npub struct Ctx(Policy);\n",
    );
    write(
        "store/mod.rs",
        "pub mod policy;\npub mod load;\npub use policy::Policy;\n",
    );
    write("store/policy.rs", "pub struct Policy;\n");
    write(
        "store/load.rs",
        "use super::policy::{self as p};\npub fn f(_: &crate::ctx::Ctx) {}\n",
    );
    let graph = Graph::of(&dir);
    assert!(graph.cycles().is_empty(), "{:?}", graph.cycles());
    write(
        "store/policy.rs",
        "pub struct Policy;\n#[allow(dead_code)]\nfn g(_: crate::store::load::X) {}\n",
    );
    write(
        "store/load.rs",
        "use {super::policy, crate::ctx::{self, Ctx}};\npub struct X;\n",
    );
    let cycles = Graph::of(&dir).cycles();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        cycles
            .iter()
            .any(|c| c.contains("ctx.rs") && c.contains("policy.rs") && c.contains("load.rs")),
        "{cycles:?}"
    );
}
