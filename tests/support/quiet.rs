//! Children's stderr, kept out of a passing run and shown with a failing one: a green
//! `tests/run.sh` should not print hundreds of fixture log lines (a node's
//! `Session ID unknown` is what many tests provoke on purpose), but a test that fails
//! should show what its peers said.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Lines kept per child: the end of its story is what explains a failure.
const KEPT: usize = 400;

/// The last lines a child wrote to stderr; printed (where the test harness captures
/// them) when dropped during a panic.
pub struct StderrTail {
    name: String,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl StderrTail {
    /// Starts reading `stderr` of the child called `name`.
    pub fn follow(name: &str, stderr: impl AsyncRead + Unpin + Send + 'static) -> StderrTail {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut kept = sink.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        StderrTail {
            name: name.to_owned(),
            lines,
        }
    }
}

impl Drop for StderrTail {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let kept = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_empty() {
            return;
        }
        eprintln!(
            "--- stderr of {} (last {} lines) ---",
            self.name,
            kept.len()
        );
        for line in kept.iter() {
            eprintln!("[{}] {line}", self.name);
        }
    }
}
