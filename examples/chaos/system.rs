//! The processes of a chaos run: two APIs, three workers and an SQS
//! emulator of the run's own, each restartable, their output kept in files;
//! and the machine's MariaDB, paused and restarted.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ADMIN: &str = "chaos-admin-token-0123456789";
pub const DB: &str = "mechanica_chaos";
pub const SERVER: &str = "mysql://root@127.0.0.1:3306";

/// A port free now, for a process that is started and restarted on it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One restartable process: its command line, and the child while it runs.
pub struct Proc {
    pub name: String,
    program: String,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Proc {
    pub fn new(
        name: &str,
        program: &str,
        args: &[&str],
        vars: Vec<(String, String)>,
        logs: &std::path::Path,
    ) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            vars,
            log: logs.join(format!("{name}.log")),
            child: None,
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.vars {
            command.env(k, v);
        }
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", self.program)),
        );
        self.starts += 1;
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it exited on its own (it should not), with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mariadb_pid() -> Option<String> {
    let out = Command::new("pidof").arg("mariadbd").output().ok()?;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!pid.is_empty()).then_some(pid)
}

fn signal_mariadb(signal: &str) {
    if let Some(pid) = mariadb_pid() {
        let _ = Command::new("kill").args([signal, &pid]).status();
    }
}

pub fn pause_mariadb() {
    signal_mariadb("-STOP");
}

pub fn resume_mariadb() {
    signal_mariadb("-CONT");
}

fn mariadb_answers() -> bool {
    Command::new("mysqladmin")
        .args(["--host=127.0.0.1", "--user=root", "--silent", "ping"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A clean shutdown (every connection cut), then a start as the developers'
/// guide does it; returns once it answers again.
pub fn restart_mariadb() {
    let _ = Command::new("mysqladmin")
        .args(["--host=127.0.0.1", "--user=root", "shutdown"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    for _ in 0..240 {
        if mariadb_pid().is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure_mariadb();
}

/// MariaDB running and not paused, whatever a fault left behind.
pub fn ensure_mariadb() {
    resume_mariadb();
    if mariadb_pid().is_none() {
        let _ = Command::new("start-stop-daemon")
            .args([
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
                "--",
                "--user=mysql",
            ])
            .status();
    }
    for _ in 0..240 {
        if mariadb_answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("MariaDB did not answer within 60 s of starting");
}

/// Leaves MariaDB running however the run ends (a panic included).
pub struct MariadbGuard;

impl Drop for MariadbGuard {
    fn drop(&mut self) {
        ensure_mariadb();
    }
}
