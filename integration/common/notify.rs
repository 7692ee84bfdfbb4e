//! What a started Ballast tells through the service manager's protocol (`NOTIFY_SOCKET`,
//! `sd_notify(3)`): readiness and the addresses it serves, read machine-readably instead of
//! from log wording.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the notifications said so far.
#[derive(Debug, Default)]
pub struct State {
    /// `READY=1` seen.
    pub ready: bool,
    /// `STOPPING=1` seen.
    pub stopping: bool,
    /// `X_BALLAST_ADMIN`.
    pub admin: Option<SocketAddr>,
    /// The latest `X_BALLAST_LISTENERS`, by name.
    pub listeners: HashMap<String, SocketAddr>,
    /// Every message, in order.
    pub messages: Vec<String>,
}

/// A notification socket and a thread reading it.
pub struct Notifications {
    path: PathBuf,
    _dir: tempfile::TempDir,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Notifications {
    /// A socket to hand to a child as `NOTIFY_SOCKET`.
    pub fn new() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !st.load(Ordering::Acquire) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue; // the read timeout: look at `stop` again
                };
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let mut state = s.0.lock().unwrap();
                for line in text.lines() {
                    match line.split_once('=') {
                        Some(("READY", "1")) => state.ready = true,
                        Some(("STOPPING", "1")) => state.stopping = true,
                        Some(("X_BALLAST_ADMIN", a)) => state.admin = a.parse().ok(),
                        Some(("X_BALLAST_LISTENERS", list)) => {
                            state.listeners = list
                                .split(',')
                                .filter_map(|kv| kv.split_once('='))
                                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                                .collect();
                        }
                        _ => {}
                    }
                }
                state.messages.push(text);
                s.1.notify_all();
            }
        });
        Notifications {
            path,
            _dir: dir,
            state,
            stop,
        }
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until `pick` finds what it wants in the state (bounded by `timeout`); `None` when
    /// it does not in time.
    pub fn wait<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.0.lock().unwrap();
        loop {
            if let Some(found) = pick(&state) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self.state.1.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<String> {
        self.state.0.lock().unwrap().messages.clone()
    }

    /// How many messages so far (a mark for [`Notifications::wait_line_after`]).
    pub fn count(&self) -> usize {
        self.state.0.lock().unwrap().messages.len()
    }

    /// Waits (bounded by `timeout`) until a message after the first `mark` has the line
    /// `line` (an assignment such as `READY=1`); returns the messages from `mark` on. Panics
    /// with them on timeout.
    #[track_caller]
    pub fn wait_line_after(&self, mark: usize, line: &str, timeout: Duration) -> Vec<String> {
        let has = |m: &String| m.lines().any(|l| l == line);
        let since = self.wait(timeout, |s| {
            s.messages[mark..]
                .iter()
                .any(has)
                .then(|| s.messages[mark..].to_vec())
        });
        match since {
            Some(messages) => messages,
            None => panic!(
                "no notification with {line:?} within {timeout:?}; since the mark: {:?}",
                &self.messages()[mark..]
            ),
        }
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
