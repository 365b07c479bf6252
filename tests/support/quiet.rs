//! Children's stderr, kept out of a passing run and shown with a failing one: a green
//! `tests/run.sh` should not print hundreds of fixture log lines (a node's
//! `Session ID unknown` is what many tests provoke on purpose), but a test that fails
//! should show what its peers said. A test can also wait for a line (a log line that
//! says something happened) and count them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Notify;

/// Lines shown when a test fails: the end of a child's story is what explains it.
const SHOWN: usize = 400;

/// Lines kept for waiting and counting: a soak's chatty child must not grow without
/// bound; the oldest go first (marks stay valid, counting from the first line).
const KEPT: usize = 50_000;

#[derive(Default)]
struct Lines {
    /// Lines dropped from the front so far.
    dropped: usize,
    kept: std::collections::VecDeque<String>,
}

#[derive(Default)]
struct Seen {
    lines: Mutex<Lines>,
    /// Woken on each new line, and when the stream ends.
    more: Notify,
    ended: std::sync::atomic::AtomicBool,
}

/// The lines a child wrote to one of its pipes; the last of them printed (where the test
/// harness captures them) when dropped during a panic.
pub struct StderrTail {
    name: String,
    seen: Arc<Seen>,
}

impl StderrTail {
    /// Starts reading `stderr` (or any pipe) of the child called `name`.
    pub fn follow(name: &str, stderr: impl AsyncRead + Unpin + Send + 'static) -> StderrTail {
        let seen = Arc::new(Seen::default());
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                {
                    let mut lines = sink.lines.lock().unwrap_or_else(|e| e.into_inner());
                    if lines.kept.len() == KEPT {
                        lines.kept.pop_front();
                        lines.dropped += 1;
                    }
                    lines.kept.push_back(line);
                }
                sink.more.notify_waiters();
            }
            sink.ended.store(true, std::sync::atomic::Ordering::Release);
            sink.more.notify_waiters();
        });
        StderrTail {
            name: name.to_owned(),
            seen,
        }
    }

    /// How many lines so far: a mark to wait or count from.
    pub fn mark(&self) -> usize {
        let lines = self.lines();
        lines.dropped + lines.kept.len()
    }

    /// The lines from `from` on (of those still kept) that hold every one of `parts`.
    pub fn matching(&self, from: usize, parts: &[&str]) -> Vec<String> {
        let lines = self.lines();
        lines
            .kept
            .iter()
            .skip(from.saturating_sub(lines.dropped))
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    /// Waits up to `within` for a line from `from` on that holds every one of `parts`;
    /// fails the test (showing the lines) if none comes.
    pub async fn wait_for(&self, from: usize, parts: &[&str], within: Duration) -> String {
        let found = tokio::time::timeout(within, async {
            loop {
                let more = self.seen.more.notified();
                if let Some(line) = self.matching(from, parts).into_iter().next() {
                    return Some(line);
                }
                if self.seen.ended.load(std::sync::atomic::Ordering::Acquire) {
                    return None;
                }
                more.await;
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{} ended without a line holding {parts:?}", self.name),
            Err(_) => panic!("no line holding {parts:?} from {} in {within:?}", self.name),
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.seen.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for StderrTail {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let lines = self.lines();
        if lines.kept.is_empty() {
            return;
        }
        let skip = lines.kept.len().saturating_sub(SHOWN);
        eprintln!(
            "--- output of {} (last {} lines) ---",
            self.name,
            lines.kept.len() - skip
        );
        for line in lines.kept.iter().skip(skip) {
            eprintln!("[{}] {line}", self.name);
        }
    }
}
