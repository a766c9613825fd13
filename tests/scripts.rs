//! The shell scripts' build paths: `scripts/run` and `scripts/bench` run the binaries from
//! cargo's own target directory, so a user with `CARGO_TARGET_DIR` set gets what was built.
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script (or `bash -c`), with `CARGO_TARGET_DIR` set to `target_dir` or unset;
/// returns its trimmed stdout after asserting success.
fn output(args: &[&str], target_dir: Option<&Path>) -> String {
    let mut cmd = Command::new("bash");
    cmd.args(args).current_dir(root()).env_remove("CARGO_TARGET_DIR");
    if let Some(dir) = target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let out = cmd.output().expect("run bash");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

#[test]
fn run_and_bench_take_the_binary_from_cargo_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("elsewhere");
    let lib = "source scripts/lib.sh && cargo_target_dir";
    assert_eq!(output(&["-c", lib], Some(&custom)), custom.display().to_string());
    assert_eq!(
        output(&["scripts/run", "--print-binary"], Some(&custom)),
        custom.join("release/scan-gateway").display().to_string()
    );
    assert_eq!(
        output(&["scripts/bench", "--print-binary-dir"], Some(&custom)),
        custom.join("release").display().to_string()
    );
    assert_eq!(
        output(&["scripts/bench", "--smoke", "--print-binary-dir"], Some(&custom)),
        custom.join("debug").display().to_string()
    );
}

#[test]
fn without_cargo_target_dir_the_binary_is_under_the_checkouts_target() {
    assert_eq!(
        output(&["scripts/run", "--print-binary"], None),
        root().join("target/release/scan-gateway").display().to_string()
    );
}
