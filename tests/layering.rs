//! The layering of `src/`, checked: each top-level module may name only the
//! modules below it (docs/ARCHITECTURE.md, "Layers"). A `use` (or path) that
//! reaches upwards or sideways fails here, so an import circle cannot come
//! back unnoticed.

use std::collections::BTreeMap;
use std::path::Path;

/// Module -> the modules it may use. `lib.rs` and `main.rs` assemble the
/// node and may use anything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("wire", &["model"]),
    ("core", &["model", "wire"]),
    ("store", &["model"]),
    ("client", &["model", "wire"]),
    ("server", &["model", "wire", "core", "store"]),
    ("cluster", &["model", "wire", "core", "store", "server"]),
    ("legacy", &["model", "wire", "core", "store", "server"]),
    ("provision", &["model", "store", "server"]),
    ("chat", &["model", "wire", "client"]),
    // `ringchat admin`: an HTTP client of `server::admin`, naming nothing.
    ("admin_cli", &[]),
    // Reads flags, env and file into the server's and the cluster's
    // configuration: part of assembling a node, like main.rs.
    ("config", &["model", "core", "server", "cluster"]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules named as `crate::NAME` in code (comments skipped).
fn named_modules(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + 7..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in files {
        let rel = f.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(ok) = allowed.get(top.as_str()) else {
            violations.push(format!(
                "{}: module `{top}` is not in the layering table",
                rel.display()
            ));
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(&f).unwrap();
        for m in named_modules(&text) {
            // Macros exported at the crate root are not layers.
            if m == top || !allowed.contains_key(m.as_str()) {
                continue;
            }
            if !ok.contains(&m.as_str()) {
                violations.push(format!("{}: `{top}` uses `crate::{m}`", rel.display()));
            }
        }
    }
    assert!(checked > 30, "found only {checked} source files");
    assert!(
        violations.is_empty(),
        "forbidden imports:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_forbidden_use() {
    assert_eq!(
        named_modules("use crate::server::shard::Shard; // crate::legacy in a comment"),
        vec!["server"]
    );
    assert_eq!(
        named_modules("let x = crate::store::open(a, crate::model::now_ms());"),
        vec!["store", "model"]
    );
}
