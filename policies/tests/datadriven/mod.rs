//! The transcript format shared by the controller's and the ownership machine's tests (raft-rs's
//! datadriven tests): a block of command lines, `----`, then what the commands printed, one
//! line each, up to a blank line. `#` lines are comments. `REWRITE=1` rewrites the files with
//! what the code prints now; read the diff.

use std::path::Path;

/// Runs one transcript through `run` (a command line in, printed lines out); returns the file
/// as it would be with the actual output.
pub fn run_file(text: &str, mut run: impl FnMut(&str) -> Vec<String>) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // A block: command lines up to `----`, then expected lines up to a blank line.
        let mut commands = vec![line];
        out.push_str(line);
        out.push('\n');
        for l in lines.by_ref() {
            out.push_str(l);
            out.push('\n');
            if l == "----" {
                break;
            }
            commands.push(l);
        }
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            lines.next();
        }
        for c in commands {
            for printed in run(c) {
                out.push_str(&printed);
                out.push('\n');
            }
        }
    }
    out
}

/// Runs every transcript file directly in `dir`, each with a fresh `run_file`; fails with the
/// differences (or rewrites the files under `REWRITE=1`).
pub fn check_dir(dir: &Path, mut run_file: impl FnMut(&str) -> String) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no transcripts in {}", dir.display());
    let mut failed = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let actual = run_file(&text);
        if actual != text {
            if std::env::var_os("REWRITE").is_some() {
                std::fs::write(&path, &actual).unwrap();
            } else {
                failed.push(format!("--- {}\n{}", path.display(), diff(&text, &actual)));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "transcripts differ (REWRITE=1 regenerates):\n{}",
        failed.join("\n")
    );
}

fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (
            e.get(i).copied().unwrap_or("<eof>"),
            a.get(i).copied().unwrap_or("<eof>"),
        );
        if x != y {
            out += &format!("line {}: expected `{x}`\n         actual   `{y}`\n", i + 1);
        }
    }
    out
}
