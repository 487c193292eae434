//! Runs the example Python client (`examples/python/ringchat_client.py`,
//! written from docs/PROTOCOL.md and the schema alone, with `flatc --python`
//! code) against the real server, on the SQLite and the MySQL store.
//!
//! Needs a Python 3 with the `flatbuffers` package: `$RINGCHAT_PYTHON` if
//! set, else `target/pyenv/bin/python` (what `.ci/run` creates), else
//! `python3`. Without one the tests print `SKIPPED` and pass, unless
//! `RINGCHAT_REQUIRE_PYTHON=1` (CI), which makes them fail instead.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A Python interpreter that can `import flatbuffers`, or why there is none.
fn python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates: Vec<PathBuf> = vec![];
    if let Some(p) = std::env::var_os("RINGCHAT_PYTHON") {
        candidates.push(p.into());
    } else {
        candidates.push(root.join("target/pyenv/bin/python"));
        candidates.push("python3".into());
    }
    let mut why = vec![];
    for p in candidates {
        match Command::new(&p)
            .args(["-c", "import flatbuffers"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) if o.status.success() => return Ok(p),
            Ok(o) => why.push(format!(
                "{}: {}",
                p.display(),
                // The last line of the traceback: "ModuleNotFoundError: ...".
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => why.push(format!("{}: {e}", p.display())),
        }
    }
    Err(why.join("; "))
}

/// The interpreter to use, `None` to skip (after saying so).
fn python_or_skip(test: &str) -> Option<PathBuf> {
    match python() {
        Ok(p) => Some(p),
        Err(why) => {
            if std::env::var("RINGCHAT_REQUIRE_PYTHON").as_deref() == Ok("1") {
                panic!(
                    "RINGCHAT_REQUIRE_PYTHON=1 but no Python with the flatbuffers package \
                     ({why}); install it with `pip install flatbuffers==25.12.19` \
                     or set RINGCHAT_PYTHON"
                );
            }
            // Straight to stderr: the harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test}: no Python with the flatbuffers package ({why}); \
                 set RINGCHAT_REQUIRE_PYTHON=1 to make this a failure"
            );
            None
        }
    }
}

/// Runs the client against `s` and fails the test, with both sides'
/// output, unless it exits 0.
fn run_client(python: &Path, s: &TestServer) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/ringchat_client.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(s.addr.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        status.success(),
        "python client exited with {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         --- server stderr\n{}",
        s.stderr()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn python_client_follows_the_documented_protocol() {
    let Some(py) = python_or_skip("python_client_follows_the_documented_protocol") else {
        return;
    };
    let s = TestServer::start();
    run_client(&py, &s);
}

#[test]
fn python_client_on_the_mysql_store() {
    let Some(py) = python_or_skip("python_client_on_the_mysql_store") else {
        return;
    };
    let Some(db) = MysqlDb::new("pyclient") else {
        return;
    };
    let s = TestServer::start_with(&["--store", &db.store()]);
    run_client(&py, &s);
    drop(s);
}
