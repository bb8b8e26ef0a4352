//! The `orderflow` application: composes the settings of every component ([`settings`]), wires
//! them, Postgres, Kafka and the components of the other crates into long-running processes,
//! and holds the demo. The command line lives in `main.rs`; everything here is callable from
//! tests.

pub mod bench;
pub mod check;
pub mod components;
pub mod demo;
pub mod dlq;
pub mod keys;
pub mod operator;
pub mod replay;
pub mod restore;
pub mod serve;
pub mod settings;
pub mod state;
pub mod status;
pub mod synth;

#[cfg(test)]
mod architecture {
    //! ARCHITECTURE.md stays true: every file or directory it names exists, found from the
    //! repository root or, in a crate's bullet of the code map, inside that crate.

    use std::path::{Path, PathBuf};

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let skip = [".git", "target", ".run", "node_modules"];
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            if path.is_dir() {
                out.push(path.clone());
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// Backticked names in `line` that look like paths: a known extension or a trailing `/`.
    fn named_paths(line: &str) -> Vec<&str> {
        let extensions = [".rs", ".md", ".sql", ".java", ".xml", ".toml", ".avsc"];
        line.split('`')
            .skip(1)
            .step_by(2)
            // `.run/` is made at run time, `~/…` is outside the repository.
            .filter(|t| !t.contains(' ') && !t.starts_with(".run") && !t.starts_with('~'))
            .filter(|t| t.ends_with('/') || extensions.iter().any(|e| t.ends_with(e)))
            .collect()
    }

    fn exists(root: &Path, all: &[PathBuf], within: Option<&str>, name: &str) -> bool {
        let name = name.trim_end_matches('/');
        // A placeholder (`runbooks/<alert>.md`) stands for any name, like `*`.
        let name = match (name.find('<'), name.find('>')) {
            (Some(open), Some(close)) if open < close => {
                format!("{}*{}", &name[..open], &name[close + 1..])
            }
            _ => name.to_string(),
        };
        let name = name.as_str();
        if let Some((dir, pattern)) = name.rsplit_once("/*") {
            let bases = [Some(root.to_path_buf()), within.map(|w| root.join(w))];
            return bases.into_iter().flatten().any(|base| {
                std::fs::read_dir(base.join(dir)).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(pattern))
                })
            });
        }
        if root.join(name).exists() {
            return true;
        }
        let base = within.map_or_else(|| root.to_path_buf(), |crate_dir| root.join(crate_dir));
        all.iter()
            .any(|p| p.starts_with(&base) && p.ends_with(name))
    }

    #[test]
    fn every_path_named_in_the_architecture_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
        let mut all = Vec::new();
        files(&root, &mut all);
        let all: Vec<PathBuf> = all
            .into_iter()
            .map(|p| p.strip_prefix(&root).unwrap_or(&p).to_path_buf())
            .map(|p| root.join(p))
            .collect();
        let mut within: Option<String> = None;
        let mut missing = Vec::new();
        let mut checked = 0;
        for line in text.lines() {
            // A code-map bullet names its directory first: "- `consumers/` — ...".
            if let Some(rest) = line.strip_prefix("- `") {
                within = rest
                    .split_once('`')
                    .map(|(dir, _)| dir.to_string())
                    .filter(|dir| dir.ends_with('/'));
            } else if !line.starts_with("  ") {
                within = None;
            }
            for name in named_paths(line) {
                checked += 1;
                if !exists(&root, &all, within.as_deref(), name) {
                    missing.push(format!("{name} (in: {})", within.as_deref().unwrap_or("/")));
                }
            }
        }
        assert!(
            checked > 50,
            "only {checked} paths found; is the code map still there?"
        );
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md names paths that do not exist: {missing:?}"
        );
    }

    #[test]
    fn the_check_fails_on_a_name_that_is_gone() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut all = Vec::new();
        files(&root, &mut all);
        assert!(exists(&root, &all, Some("consumers/"), "engine.rs"));
        assert!(!exists(&root, &all, Some("consumers/"), "kafka.rs"));
        assert!(!exists(&root, &all, None, "consumers/src/handler.rs"));
        assert!(exists(&root, &all, None, "schemas/*.avsc"));
        assert!(exists(&root, &all, None, "docs/runbooks/<alert>.md"));
        assert!(exists(&root, &all, Some("docs/"), "runbooks/<alert>.md"));
        assert!(!exists(&root, &all, None, "docs/runbooks/<alert>.avsc"));
        assert!(named_paths("`~/.cache/orderflow/` and `docs/`") == ["docs/"]);
        assert_eq!(
            named_paths("`a.rs` and `b/` but not `x y.rs` or `.run/k/`"),
            ["a.rs", "b/"]
        );
    }
}
