//! The crate checks its own layering (the habit of rust-analyzer's `tidy` tests: write the
//! invariant down in `docs/architecture.md`, and test what can be tested by reading the sources).
//!
//! `src/` is laid out in layers, one folder each, bottom to top:
//!
//! base, config, domain, observe, upstream, store, protect, service, seed, http, app
//!
//! * A file imports (`crate::…`, `super::…`, outside `#[cfg(test)]` modules and comments) only
//!   from its own layer or the layers below it.
//! * No two files import each other, directly or through others (no import circle), within a
//!   layer or across layers.
//! * Below `http/`, no file names actix's request, response or app-data types, nor the HTTP
//!   side's `AppState`: serving a tile, seeding and the stores are usable without a server.
//!
//! A failure names the file, the line and the rule it breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: &[&str] =
    &["base", "config", "domain", "observe", "upstream", "store", "protect", "service", "seed", "http", "app"];

/// Words that only the HTTP side (`http/`, `app/`) may use.
const HTTP_ONLY: &[&str] = &["HttpRequest", "HttpResponse", "web::Data", "ServiceRequest", "AppState"];

/// A module of the crate: its path under `src/` without `.rs`, `mod.rs` folded into its folder.
type Module = Vec<String>;

struct Source {
    file: PathBuf,
    /// The text with `#[cfg(test)] mod … { … }` blocks and comments blanked (lines kept).
    code: String,
}

fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs").to_string();
    if stem != "mod" {
        parts.push(stem);
    }
    parts
}

fn sources(src: &Path) -> BTreeMap<Module, Source> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("read src/") {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(src).expect("under src/").to_path_buf();
                let module = module_of(&rel);
                if module == ["lib"] || module == ["main"] {
                    continue; // the crate root declares the layers; main.rs is a client of the crate
                }
                let text = std::fs::read_to_string(&path).expect("read a source file");
                out.insert(module, Source { file: Path::new("src").join(rel), code: blank(&text) });
            }
        }
    }
    out
}

/// `text` with comments and `#[cfg(test)] mod NAME { … }` blocks replaced by spaces (newlines
/// kept, so line numbers stay true). String literals are kept: a path in a string is rare and
/// would only add an edge.
fn blank(text: &str) -> String {
    let mut b: Vec<u8> = text.as_bytes().to_vec();
    // Comments first (a `//` inside a string literal would be blanked too; harmless here).
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                b[i] = b' ';
                i += 1;
            }
        } else if b[i] == b'"' {
            // Skip a string literal so a "//" in it (a URL) does not start a comment.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    let s = String::from_utf8(b).expect("utf8 stays utf8");
    let mut b = s.clone().into_bytes();
    let mut from = 0;
    while let Some(at) = s[from..].find("#[cfg(test)]") {
        let start = from + at;
        let after = s[start + "#[cfg(test)]".len()..].trim_start();
        if let Some(rest) = after.strip_prefix("mod ") {
            if let Some(open) = rest.find('{').filter(|&o| !rest[..o].contains(';')) {
                let mut j = s.len() - rest.len() + open + 1;
                let mut depth = 1;
                while j < b.len() && depth > 0 {
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                for c in &mut b[start..j] {
                    if *c != b'\n' {
                        *c = b' ';
                    }
                }
                from = j;
                continue;
            }
        }
        from = start + 1;
    }
    String::from_utf8(b).expect("utf8 stays utf8")
}

/// The module `path` names: the longest prefix of it that is a module of the crate, or, when
/// that is a folder whose `mod.rs` re-exports the next name (`pub use child::Item;`,
/// `pub use child::{Item, ..};` or `pub use child::*;` with `Item` defined in `child`), the
/// child that defines it. So `crate::config::Settings` is an import of `config/settings.rs`,
/// and a circle hidden behind a folder's re-exports is still a circle.
fn resolve(path: &[String], modules: &BTreeMap<Module, Source>) -> Option<Module> {
    let m = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains_key(m))?;
    let Some(item) = path.get(m.len()) else { return Some(m) };
    Some(reexporter(&m, item, modules).unwrap_or(m))
}

/// The child of folder module `m` whose item `item` `m`'s `mod.rs` re-exports, if any.
fn reexporter(m: &Module, item: &str, modules: &BTreeMap<Module, Source>) -> Option<Module> {
    let code = &modules.get(m).filter(|s| s.file.ends_with("mod.rs"))?.code;
    let mut globs = Vec::new();
    for stmt in code.split(';') {
        let Some(at) = stmt.find("pub use ") else { continue };
        let path = stmt[at + "pub use ".len()..].trim().trim_start_matches("self::");
        let Some((first, rest)) = path.split_once("::") else { continue };
        let child: Module = m.iter().cloned().chain([first.to_string()]).collect();
        if !modules.contains_key(&child) {
            continue; // a re-export of another crate's item
        }
        let rest = rest.trim();
        if rest == "*" {
            globs.push(child);
        } else {
            let items = rest.trim_start_matches('{').trim_end_matches('}');
            let named = items.split(',').map(|i| i.split(" as ").last().unwrap_or("").trim());
            if named.into_iter().any(|i| i == item) {
                return Some(child);
            }
        }
    }
    globs.into_iter().find(|g| defines(&modules[g].code, item))
}

/// Every child of folder module `m` that its `mod.rs` re-exports (`pub use child::...`).
fn reexported(m: &Module, modules: &BTreeMap<Module, Source>) -> Vec<Module> {
    let Some(code) = modules.get(m).filter(|s| s.file.ends_with("mod.rs")).map(|s| &s.code) else {
        return Vec::new();
    };
    code.split(';')
        .filter_map(|stmt| {
            let at = stmt.find("pub use ")?;
            let first = stmt[at + "pub use ".len()..].trim().trim_start_matches("self::").split("::").next()?;
            let child: Module = m.iter().cloned().chain([first.to_string()]).collect();
            modules.contains_key(&child).then_some(child)
        })
        .collect()
}

/// True when `code` defines `item` at some level (a struct, enum, fn, const, static, type,
/// trait or module of that name).
fn defines(code: &str, item: &str) -> bool {
    ["struct ", "enum ", "fn ", "const ", "static ", "type ", "trait ", "mod "].iter().any(|kw| {
        let pattern = format!("{kw}{item}");
        code.match_indices(&pattern).any(|(i, _)| {
            let before = code[..i].bytes().last();
            let after = code[i + pattern.len()..].bytes().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
    })
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every module `code` names, with the line it is named on.
fn imports(module: &Module, code: &str, modules: &BTreeMap<Module, Source>) -> Vec<(Module, usize)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", module[..module.len().saturating_sub(1)].to_vec())] {
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix) {
            let start = from + at;
            from = start + prefix.len();
            if start > 0 && (is_ident(bytes[start - 1]) || bytes[start - 1] == b':') {
                continue; // `foo::crate::` or `super::super::`: not a path from the crate root here
            }
            // A `mod.rs` file's `super` is its folder's parent; others' is their folder.
            let base = if prefix == "super::" && is_folder(module, modules) {
                module[..module.len().saturating_sub(1)].to_vec()
            } else {
                base.clone()
            };
            let line = code[..start].matches('\n').count() + 1;
            // The path: idents separated by `::`, possibly ending in a `{ … }` group.
            let mut segs = Vec::new();
            let mut j = from;
            loop {
                let s = j;
                while j < bytes.len() && is_ident(bytes[j]) {
                    j += 1;
                }
                if j == s {
                    break;
                }
                segs.push(code[s..j].to_string());
                if code[j..].starts_with("::") {
                    j += 2;
                } else {
                    break;
                }
            }
            let mut targets = vec![segs.clone()];
            let top_level = code[..start].rsplit('\n').next().is_some_and(|l| l == "use ");
            if code[j..].starts_with('*') && top_level {
                // `use super::*;` of a folder: every file the folder re-exports is imported (a
                // glob hides which; import from the file itself to say less).
                let folder: Module = base.iter().cloned().chain(segs.iter().cloned()).collect();
                for child in reexported(&folder, modules) {
                    if &child != module {
                        out.push((child, line));
                    }
                }
            }
            if code[j..].starts_with('{') {
                let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                targets = code[j + 1..end]
                    .split(',')
                    .map(|item| item.split(" as ").next().unwrap_or("").trim())
                    .filter(|item| !item.is_empty() && *item != "self")
                    .map(|item| {
                        let item = item.split('{').next().unwrap_or("");
                        segs.iter().cloned().chain(item.split("::").map(|s| s.trim().to_string())).collect()
                    })
                    .collect();
                targets.push(segs.clone());
            }
            for t in targets {
                let full: Vec<String> = base.iter().cloned().chain(t).collect();
                if let Some(m) = resolve(&full, modules) {
                    if &m != module {
                        out.push((m, line));
                    }
                }
            }
        }
    }
    out
}

fn is_folder(module: &Module, modules: &BTreeMap<Module, Source>) -> bool {
    modules.get(module).is_some_and(|s| s.file.ends_with("mod.rs"))
}

fn layer(module: &Module) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module[0])
}

fn name(m: &Module) -> String {
    m.join("/")
}

/// The import graph's strongly connected parts of more than one file.
fn circles(edges: &BTreeMap<Module, BTreeMap<Module, usize>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, usize>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T<'_>, v: &Module) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).into_iter().flat_map(|e| e.keys()) {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().expect("on the stack");
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// What is wrong with the tree at `src`: one line per broken rule.
fn problems(src: &Path) -> Vec<String> {
    let modules = sources(src);
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Module, BTreeMap<Module, usize>> = BTreeMap::new();
    for (module, source) in &modules {
        let file = source.file.display();
        let Some(own) = layer(module) else {
            problems.push(format!("{file}: not in a layer folder (layers: {})", LAYERS.join(", ")));
            continue;
        };
        let e = edges.entry(module.clone()).or_default();
        for (target, line) in imports(module, &source.code, &modules) {
            e.entry(target.clone()).or_insert(line);
            if let Some(theirs) = layer(&target).filter(|&l| l > own) {
                problems.push(format!(
                    "{file}:{line}: imports {} from the layer `{}`, above its own `{}` (a file imports only from its own layer or those below it: {})",
                    name(&target),
                    LAYERS[theirs],
                    LAYERS[own],
                    LAYERS.join(" < ")
                ));
            }
        }
        if own < layer(&vec!["http".to_string()]).expect("http is a layer") {
            for (n, text) in source.code.lines().enumerate() {
                for word in HTTP_ONLY.iter().filter(|w| contains_word(text, w)) {
                    problems.push(format!(
                        "{file}:{}: names `{word}` below the http layer (only http/ and app/ know actix's request types and AppState)",
                        n + 1
                    ));
                }
            }
        }
    }
    for circle in circles(&edges) {
        let members: BTreeSet<&Module> = circle.iter().collect();
        let mut lines = Vec::new();
        for m in &circle {
            for (t, line) in &edges[m] {
                if members.contains(t) {
                    lines.push(format!("{}:{line} imports {}", modules[m].file.display(), name(t)));
                }
            }
        }
        problems.push(format!(
            "an import circle of {} files (no two files import each other, directly or through others): {}",
            circle.len(),
            lines.join("; ")
        ));
    }
    problems
}

fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].bytes().last();
        let after = text[i + word.len()..].bytes().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn every_import_goes_down_the_layers_and_none_makes_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = problems(&src);
    assert!(problems.is_empty(), "the layering of src/ is broken:\n{}", problems.join("\n"));
}

/// The check itself catches what it is for: a tree with an upward import, a circle and an actix
/// type below http/ (written to a temporary folder) gives one problem of each kind.
#[test]
fn the_check_finds_an_upward_import_a_circle_and_actix_below_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().expect("a folder")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "pub mod base;\npub mod config;\npub mod domain;\npub mod store;\npub mod http;\n");
    write("base/mod.rs", "pub mod a;\npub mod b;\n");
    write("base/a.rs", "use crate::base::b::B;\n\n// use crate::http::x; (a comment: ignored)\n");
    write("base/b.rs", "//! doc\n\nuse super::a;\npub struct B;\n");
    write("domain/mod.rs", "pub mod rule;\n");
    write(
        "domain/rule.rs",
        "use crate::{base::b::B, http::handler};\nfn f(_: HttpRequest) {}\n#[cfg(test)]\nmod tests {\n    use crate::http::handler;\n}\n",
    );
    write("http/mod.rs", "pub mod handler;\n");
    // A circle behind a folder's re-exports: x and y each name the other's item through `config`.
    write("config/mod.rs", "mod x;\nmod y;\npub use bytesize::ByteSize;\npub use x::*;\npub use y::{Y};\n");
    write("config/x.rs", "use crate::config::Y;\npub struct X;\n");
    write("config/y.rs", "use crate::config::X;\npub struct Y;\n");
    // And one behind a glob of the folder: `use super::*;` imports every file the folder re-exports.
    write("store/mod.rs", "mod p;\nmod q;\npub use p::*;\npub use q::*;\n");
    write("store/p.rs", "use super::*;\npub struct P(Q);\n");
    write("store/q.rs", "use super::p::P;\npub struct Q;\nmod inner {\n    use super::*;\n}\n");
    write("http/handler.rs", "use crate::domain::rule;\nfn g(_: HttpRequest) {}\n");
    let found = problems(src);
    let text = found.join("\n");
    assert!(
        found.iter().any(|p| p.starts_with("src/domain/rule.rs:1: imports http/handler from the layer `http`")),
        "{text}"
    );
    assert!(found.iter().any(|p| p.starts_with("src/domain/rule.rs:2: names `HttpRequest`")), "{text}");
    assert!(
        found.iter().any(|p| p.contains("import circle of 2 files")
            && p.contains("src/base/a.rs:1 imports base/b")
            && p.contains("src/base/b.rs:3 imports base/a")),
        "{text}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("import circle of 2 files") && p.contains("src/http/handler.rs:1 imports domain/rule")),
        "{text}"
    );
    assert!(
        found.iter().any(|p| p.contains("import circle of 2 files")
            && p.contains("src/config/x.rs:1 imports config/y")
            && p.contains("src/config/y.rs:1 imports config/x")),
        "{text}"
    );
    assert!(
        found.iter().any(|p| p.contains("import circle of 2 files")
            && p.contains("src/store/p.rs:1 imports store/q")
            && p.contains("src/store/q.rs:1 imports store/p")),
        "{text}"
    );
    assert_eq!(found.len(), 6, "the test module's import, the comment and http/'s own HttpRequest are fine:\n{text}");
}
