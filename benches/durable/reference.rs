//! The Node reference server as a child process: installed with `npm ci` from the pinned lock
//! file when missing, started on a free port with a file-backed store in a temporary directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/durable")
}

/// Installs the pinned reference server unless it is there; fails loudly without `npm`.
pub fn install() {
    if dir().join("node_modules/@durable-streams/server").is_dir() {
        return;
    }
    eprintln!("durable: installing @durable-streams/server (npm ci)");
    let ok = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir())
        .status()
        .expect("npm (Node 20.19+) is needed to install the reference server");
    assert!(ok.success(), "npm ci in benches/durable failed");
}

/// A running reference server.
pub struct Reference {
    child: Child,
    /// Its base URL.
    pub base: String,
    _data: tempfile::TempDir,
}

impl Reference {
    /// Starts it and waits for its URL.
    pub async fn start() -> Reference {
        let data = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("node")
            .arg(dir().join("reference.mjs"))
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("output") {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Some(url) = v["url"].as_str() {
                        return url.to_owned();
                    }
                }
            }
            panic!("the reference server exited before it listened");
        })
        .await
        .expect("the reference server started in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Reference {
            child,
            base,
            _data: data,
        }
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
