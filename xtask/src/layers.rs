//! The layering of `firewall-userspace`, kept by a test rather than by memory: each top-level
//! module of the library belongs to a layer, and a module may use only its own layer and the
//! layers below it. `layers_point_down` reads every source file of the library and fails on an
//! import from above, and on a module that no layer lists (so a new module has to be placed).
//!
//! The `apifw` binary (`src/bin/apifw`, the CLI) sits on top of everything and is not checked.

/// The library's layers, lowest first; a module may use any module of its own row or a row above
/// this one in the list.
pub const LAYERS: &[&[&str]] = &[
    &["paths", "errors", "test_dir"],
    &["policy"],
    &["compile"],
    &["dataplane"],
    &["store"],
    &["control"],
    &["jails", "crowdsec"],
    &["engine"],
    &["daemon"],
];

/// The layer (index into [`LAYERS`]) of a top-level module.
pub fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules that `source` names through `crate::` paths: `use crate::a::b`,
/// `crate::a::f()`, and every item of `use crate::{a::x, b, c::{..}}`. Comments are skipped.
pub fn crate_references(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (c == ',' && depth == 1) {
                    found.extend(first_segment(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            found.extend(first_segment(rest));
        }
    }
    found
}

/// The leading identifier of a path (`a` of `a::b::{c}`), if it starts with one.
fn first_segment(path: &str) -> Option<String> {
    let ident: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        path::{Path, PathBuf},
    };

    use super::*;

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("readable source tree") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn layers_point_down() {
        let src = crate::workspace_root().join("firewall-userspace/src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut problems = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&src).expect("under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a file name")
                .trim_end_matches(".rs");
            if top == "lib" || top == "bin" {
                continue;
            }
            let Some(own) = layer_of(top) else {
                problems.push(format!(
                    "{}: module `{top}` is in no layer: add it to LAYERS in xtask/src/layers.rs",
                    relative.display()
                ));
                continue;
            };
            let text = fs::read_to_string(file).expect("readable source");
            for used in crate_references(&text) {
                match layer_of(&used) {
                    Some(layer) if layer <= own => {}
                    Some(_) => problems.push(format!(
                        "{}: `{top}` uses `{used}`, a layer above it",
                        relative.display()
                    )),
                    None => problems.push(format!(
                        "{}: `{top}` uses `crate::{used}`, which is in no layer",
                        relative.display()
                    )),
                }
            }
        }
        assert!(files.len() > 20, "found only {} source files", files.len());
        assert!(
            problems.is_empty(),
            "layering broken:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn references_are_found_in_every_form() {
        let source = "use crate::{a::x, b, c::{d, e::f}};\n\
                      // crate::commented\n\
                      fn g() { crate::h::i(); other_crate::j(); }\n\
                      use crate::k;";
        assert_eq!(crate_references(source), ["a", "b", "c", "h", "k"]);
    }

    #[test]
    fn an_import_from_above_is_caught() {
        // The check on a made-up file: the policy layer reaching into the engine.
        let used = crate_references("use crate::{paths, engine::Engine};");
        let policy = layer_of("policy").expect("a layer");
        let above: Vec<_> = used
            .iter()
            .filter(|m| layer_of(m).is_some_and(|layer| layer > policy))
            .collect();
        assert_eq!(above, ["engine"]);
    }
}
