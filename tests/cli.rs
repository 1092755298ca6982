//! The `wsplice` binary's command line: help, version, `--check`, and how errors are reported.
//! (Running the proxy itself is covered by the driver's end-to-end tests.)

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{text, wait_for_exit, wsplice, TempFile};

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/wsplice.toml")
        .display()
        .to_string()
}

/// Runs `--check` on `contents`; expects exit 1 and returns stderr, the file's path in it
/// written `FILE`.
fn check_fails(contents: &str) -> String {
    let file = TempFile::new("toml", contents);
    let path = file.path().display().to_string();
    let out = wsplice(&["--check", "--config", &path]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert!(
        stderr.contains(&format!("wsplice: configuration {path} test failed")),
        "{stderr}"
    );
    stderr.replace(&path, "FILE")
}

const ROUTE: &str = "[[route]]\nprefix = \"/notice\"\nbackends = [\"127.0.0.1:50001\"]\n";

#[test]
fn version() {
    let out = wsplice(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("wsplice {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_mentions_flags() {
    let out = wsplice(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--route",
        "--workers",
        "--relay",
        "--check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn check_example_config() {
    let path = example();
    let out = wsplice(&["--check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("wsplice: configuration {path} is ok\n")
    );
}

/// Every `toml` block in the README is a config an operator may copy: each must load as is.
#[test]
fn check_readme_config_blocks() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(!blocks.is_empty(), "no ```toml block in README.md");
    for block in &blocks {
        let file = TempFile::new("toml", block);
        let path = file.path().display().to_string();
        let out = wsplice(&["--check", "--config", &path]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "README block does not load:\n{block}\nstderr: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn check_with_overrides() {
    let path = example();
    let out = wsplice(&["-t", "-c", &path, "--workers", "3", "--relay", "copy"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn check_bad_value_names_line_and_key() {
    let e = check_fails(&format!(
        "listen = [\"127.0.0.1:8000\"]\n[timeouts]\nidle = \"1x\"\n{ROUTE}"
    ));
    assert!(
        e.starts_with("wsplice: error: FILE:3: timeouts.idle: invalid duration \"1x\": expected a number followed by a unit"),
        "{e}"
    );
    let e = check_fails(
        "listen = [\"127.0.0.1:8000\"]\n[[route]]\nprefix = \"/a\"\nbackends = [\"backend.local:0\"]\n"
    );
    assert!(
        e.contains("FILE:4: route.backends: invalid backend \"backend.local:0\": a name needs a port from 1 to 65535 (HOST:PORT), or srv:NAME for SRV records"),
        "{e}"
    );
}

#[test]
fn check_unknown_key() {
    let e = check_fails(&format!(
        "listen = [\"127.0.0.1:8000\"]\nworkrs = 2\n{ROUTE}"
    ));
    let want = "FILE:2: unknown key `workrs` (expected one of: listen, workers,";
    assert!(e.contains(want), "{e}");
    let e = check_fails(&format!(
        "listen = [\"127.0.0.1:8000\"]\n{ROUTE}strip = false\n"
    ));
    assert!(e.contains("FILE:5: unknown key `route.strip`"), "{e}");
}

#[test]
fn check_missing_route() {
    let e = check_fails("listen = [\"127.0.0.1:8000\"]\n");
    assert!(e.contains("FILE: route: at least one [[route]]"), "{e}");
}

#[test]
fn check_syntax_error() {
    let e = check_fails(&format!("listen = [\"127.0.0.1:8000\"\n{ROUTE}"));
    assert!(e.contains("wsplice: error: FILE:2: invalid TOML"), "{e}");
}

#[test]
fn check_unreadable_file() {
    let out = wsplice(&["--check", "--config", "/nonexistent/wsplice.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("wsplice: error: /nonexistent/wsplice.toml: cannot read: "),
        "{stderr}"
    );
    assert!(stderr.contains("os error 2"), "{stderr}");
}

#[test]
fn check_command_line_routes() {
    let out = wsplice(&[
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--route",
        "/notice=127.0.0.1:50001,127.0.0.1:50002",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "wsplice: configuration from the command line is ok\n"
    );
}

#[test]
fn bad_route_flag() {
    for (route, want) in [
        ("/notice", "wsplice: error: --route: invalid value \"/notice\": expected PREFIX=HOST:PORT"),
        ("notice=127.0.0.1:1", "--route: invalid value \"notice=127.0.0.1:1\": prefix: invalid prefix \"notice\": must start with '/'"),
        ("/a=localhost:80", "--route: invalid value \"/a=localhost:80\": backend: invalid address \"localhost:80\": use an IP address"),
    ] {
        for check in [true, false] {
            let mut args = vec!["--listen", "127.0.0.1:0", "--route", route];
            if check {
                args.push("--check");
            }
            let out = wsplice(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains(want), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--check"],
        &["--listen", "127.0.0.1:0"],
        &["--route", "/=127.0.0.1:1"],
        &[
            "--config",
            "x.toml",
            "--listen",
            "127.0.0.1:0",
            "--route",
            "/=127.0.0.1:1",
        ],
        &["--listen", "not-an-address", "--route", "/=127.0.0.1:1"],
        &["--config", "x.toml", "--workers", "0"],
        &["--config", "x.toml", "--relay", "fast"],
        &["--bogus"],
    ] {
        let out = wsplice(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn start_failure_exits_1() {
    // Until the driver lands, start itself fails; once it works, a port already taken must fail.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local addr").to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsplice"))
        .args(["--listen", &addr, "--route", "/=127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wsplice");
    // Should it start after all, fail rather than hang.
    if wait_for_exit(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wsplice started on {addr}, which is already taken");
    }
    let out = child.wait_with_output().expect("wait");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("wsplice: error: "), "{stderr}");
}
