//! Every input in the fuzz corpora (fuzz/corpus/TARGET/) and every input that once made a target
//! fail (fuzz/regressions/TARGET/) goes through the same function as the fuzz target, so a
//! regression fails `cargo test` without cargo-fuzz.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use postel::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
    paths.sort();
    paths
}

/// Runs `target` on each input; returns the inputs it failed on.
fn failures(target: fn(&[u8]), paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap();
            panic::catch_unwind(|| target(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect()
}

#[test]
fn every_corpus_input_and_every_regression_passes_its_target() {
    let mut failed = Vec::new();
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no inputs");
        failed.extend(failures(*target, &corpus));
        failed.extend(failures(
            *target,
            &inputs(&fuzz_dir().join("regressions").join(name)),
        ));
    }
    assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
}

#[test]
fn every_target_has_a_fuzz_target_file_and_every_file_a_target() {
    let mut files: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    names.sort();
    assert_eq!(files, names);
}

#[test]
fn a_target_fails_on_an_input_that_breaks_its_property() {
    // The replay would pass vacuously if the targets checked nothing: a reply line with a bare
    // CR is what the session target's output check exists for.
    let printable = panic::catch_unwind(|| {
        postel::smtp::harness::assert_printable_replies(b"250 ok\r\n550 a\rb\r\n")
    });
    assert!(printable.is_err());
}
