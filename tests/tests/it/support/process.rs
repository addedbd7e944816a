//! The fleet's own binaries (`worker`, `producer`), found by one rule and run with exactly the
//! environment a test gives them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// `target/<profile>/<name>` beside this test binary, built first when missing or older than
/// its sources (`<name>/src`, `<name>/Cargo.toml`, `shared/src`, `Cargo.lock`): a test of the
/// tests crate cannot ask cargo for another package's binary (`CARGO_BIN_EXE_*` names only
/// this package's own).
pub fn binary(name: &'static str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let root = fleet_tests::aws_env::workspace_root();
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest_source = [
        &format!("{name}/src"),
        &format!("{name}/Cargo.toml"),
        "shared/src",
        "Cargo.lock",
    ]
    .iter()
    .filter_map(|p| newest_mtime(&root.join(p)))
    .max();
    if modified.is_none() || modified < newest_source {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(&root)
            .args(["build", "-p", name, "--bin", name])
            .env(
                "CARGO_TARGET_DIR",
                profile_dir.parent().expect("target dir"),
            );
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().expect("running cargo build").success(),
            "cargo build -p {name} failed"
        );
    }
    built.insert(name, path.clone());
    path
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// [`binary`] as a command with exactly `vars` for its environment (nothing inherited, so no
/// AWS or fleet variable of the developer's shell leaks in).
pub fn command<K, V>(name: &'static str, vars: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(binary(name));
    cmd.env_clear().envs(vars);
    cmd
}

/// Runs [`binary`] to its end with exactly `vars`; its status and output.
pub fn run<K, V>(
    name: &'static str,
    args: &[&str],
    vars: impl IntoIterator<Item = (K, V)>,
) -> std::process::Output
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    command(name, vars)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// A running binary serving HTTP: its stdout and stderr lines collected, the address it logged
/// (`http_addr` in a JSON line on stderr). Killed when dropped.
pub struct Process {
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
}

#[allow(dead_code)] // each test module uses its own part
impl Process {
    /// Starts `name` with exactly `vars` and waits (up to 60 s) for its address.
    pub async fn spawn<K, V>(
        name: &'static str,
        args: &[&str],
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Process
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut child = command(name, vars)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = v.get("http_addr").and_then(Value::as_str)
                {
                    let _ = tx.send(addr.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let logged = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("reader thread");
        let addr = logged.unwrap_or_else(|_| {
            panic!(
                "{name} logged no address; output: {:?}",
                output.lock().unwrap()
            )
        });
        Process {
            child,
            addr: addr.parse().expect("socket address"),
            output,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line it printed so far (stdout and stderr, each in order).
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Sends a signal (`-TERM`, `-STOP`, `-CONT`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {pid}");
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Waits for the exit, polling; `None` when it did not exit within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGTERM, exit 0 within `limit`, and every line it printed.
    pub async fn stop(mut self, limit: Duration) -> String {
        self.sigterm();
        let code = self.wait_exit(limit).await;
        // The reader threads end with the pipes; give them a moment to hand over the tail.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = self.log_text();
        assert_eq!(code, Some(0), "exit code after SIGTERM; output:\n{text}");
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
