//! A child process of a test (the `tile-proxy` binary, a `redis-server`): spawned from a
//! `Command` (its environment, arguments and folder), its output collected line by line, and
//! waited for by its signals, never by sleeping: a line it prints, its exit (both bounded by
//! [`PATIENCE`]). Signals go through `kill(2)`; a process still running when dropped is killed,
//! so a failing test leaves nothing behind.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::{signalled, PATIENCE};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tile-proxy");

/// What a process printed so far.
#[derive(Default)]
struct Output {
    /// Every line of stdout and stderr, in the order they arrived.
    lines: Vec<String>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Pipes not at their end yet.
    open: u8,
    exited: bool,
}

/// The output, and who to tell when it changes.
#[derive(Default)]
struct Watch {
    output: Mutex<Output>,
    /// For [`Process::line_blocking`].
    changed: Condvar,
    /// For the async waits.
    notify: tokio::sync::Notify,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Output)) {
        change(&mut self.lock());
        self.changed.notify_all();
        self.notify.notify_waiters();
    }

    /// Waits until `check` gives a value, woken by every change.
    async fn until<T>(&self, what: &str, mut check: impl FnMut(&Output) -> Option<T>) -> T {
        signalled(what, async {
            loop {
                let changed = self.notify.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(v) = check(&self.lock()) {
                    return v;
                }
                changed.await;
            }
        })
        .await
    }

    /// [`Watch::until`] for callers that are not async.
    fn until_blocking<T>(&self, what: &str, mut check: impl FnMut(&Output) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        let mut output = self.lock();
        loop {
            if let Some(v) = check(&output) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for: {what}");
            output = self.changed.wait_timeout(output, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// How a process ended, and everything it printed.
pub struct Finished {
    pub status: ExitStatus,
    /// Stdout's lines, joined by `\n`.
    pub stdout: String,
    pub stderr: String,
    /// Every line of both, in the order they arrived.
    pub lines: Vec<String>,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A running child process. See the module docs.
pub struct Process {
    name: String,
    child: Child,
    watch: Arc<Watch>,
    /// Set once the process was waited for (its pid may then be reused: no signal after that).
    reaped: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr piped (read by two threads) and stdin empty.
    pub fn spawn(mut cmd: Command) -> Process {
        let name = std::path::Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let watch = Arc::new(Watch::default());
        watch.lock().open = 2;
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for (pipe, is_stdout) in [(stdout, true), (stderr, false)] {
            let watch = watch.clone();
            std::thread::spawn(move || {
                let mut pipe = BufReader::new(pipe);
                let mut buf = Vec::new();
                while matches!(pipe.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                    buf.clear();
                    watch.update(|o| {
                        let own = if is_stdout { &mut o.stdout } else { &mut o.stderr };
                        own.push(line.clone());
                        o.lines.push(line);
                    });
                }
                watch.update(|o| o.open -= 1);
            });
        }
        let pid = child.id() as libc::id_t;
        let exit = watch.clone();
        std::thread::spawn(move || {
            // WNOWAIT: the child stays unreaped, so its pid is not reused before `Process`
            // reaps it (and a signal sent meanwhile cannot reach another process).
            // SAFETY: `info` is a valid siginfo_t for waitid to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            while unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) } != 0 {
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    break;
                }
            }
            exit.update(|o| o.exited = true);
        });
        Process { name, child, watch, reaped: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far (stdout and stderr, in arrival order).
    pub fn lines(&self) -> Vec<String> {
        self.watch.lock().lines.clone()
    }

    /// The first line `matches` accepts, waiting for it; panics with the output if the process
    /// ends without printing one.
    pub async fn line(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let found = self.watch.until(what, |o| first_line(o, &matches)).await;
        found.unwrap_or_else(|output| panic!("{} ended before {what}:\n{output}", self.name))
    }

    /// [`Process::line`] for callers that are not async.
    pub fn line_blocking(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let found = self.watch.until_blocking(what, |o| first_line(o, &matches));
        found.unwrap_or_else(|output| panic!("{} ended before {what}:\n{output}", self.name))
    }

    /// [`Process::line_blocking`] that gives the output back instead of panicking when the
    /// process ends first (a caller that can retry, e.g. on a port taken meanwhile).
    pub fn try_line_blocking(&self, what: &str, matches: impl Fn(&str) -> bool) -> Result<String, String> {
        self.watch.until_blocking(what, |o| first_line(o, &matches))
    }

    /// The address of a `tile-proxy` serving with JSON logs, from its `tile-proxy listening`
    /// line: it is ready once that line is out.
    pub async fn listening(&self) -> String {
        let line = self.line("the tile-proxy listening line", |l| listening_addr(l).is_some()).await;
        listening_addr(&line).expect("an address")
    }

    /// Sends `signal` (`libc::SIGTERM`, `SIGINT`, `SIGSTOP`, ...).
    pub fn signal(&self, signal: libc::c_int) {
        assert!(self.reaped.is_none(), "{} was already waited for", self.name);
        // SAFETY: our own child, not reaped yet: the pid is still its.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill -{signal} {}: {}", self.name, std::io::Error::last_os_error());
    }

    /// Waits for the process to exit and for the end of its output.
    pub async fn exit(&mut self) -> Finished {
        let what = format!("{} to exit", self.name);
        self.watch.until(&what, |o| (o.exited && o.open == 0).then_some(())).await;
        self.finished()
    }

    /// SIGTERM, then [`Process::exit`]; the exit must be a success.
    pub async fn terminate(mut self) -> Finished {
        self.signal(libc::SIGTERM);
        let done = self.exit().await;
        assert!(done.status.success(), "{} exit status {}", self.name, done.status);
        done
    }

    /// SIGKILL, and reaped at once.
    pub fn kill(&mut self) {
        if self.reaped.is_none() {
            self.signal(libc::SIGKILL);
            self.reaped = Some(self.child.wait().expect("reaped"));
        }
    }

    fn finished(&mut self) -> Finished {
        // It has exited: this returns at once.
        let status = *self.reaped.get_or_insert_with(|| self.child.wait().expect("reaped"));
        let o = self.watch.lock();
        Finished { status, stdout: o.stdout.join("\n"), stderr: o.stderr.join("\n"), lines: o.lines.clone() }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to its end (a one-shot command: `check-config`, `stats`, `seed`).
pub async fn run(cmd: Command) -> Finished {
    Process::spawn(cmd).exit().await
}

/// `Ok(line)`: the first line `matches`; `Err(output)`: the output ended without one.
fn first_line(o: &Output, matches: &impl Fn(&str) -> bool) -> Option<Result<String, String>> {
    match o.lines.iter().find(|l| matches(l)) {
        Some(l) => Some(Ok(l.clone())),
        None if o.open == 0 => Some(Err(o.lines.join("\n"))),
        None => None,
    }
}

/// The `addr` of a JSON `tile-proxy listening` log line.
fn listening_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["message"] == "tile-proxy listening").then(|| v["addr"].as_str().map(str::to_string))?
}

/// A port of 127.0.0.1 free a moment ago, for a program that must be told its port (it may be
/// taken again before that program binds it: callers that can, retry).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}
