//! What asks for a reload: the config file changing on disk, SIGHUP, the admin API.
//! Every source sends into one channel; one loop reloads, so two triggers never run
//! two reloads at once and a burst of events (an editor writes, renames, chmods) becomes
//! one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Events closer together than this are one change.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why a reload was asked for, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChanged,
    Signal,
    Admin,
    /// A certificate or key file of a TLS listener changed.
    Certificates,
}

impl std::fmt::Display for Trigger {
    /// In words, for the reload's log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::FileChanged => "the config file changed",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /reload",
            Trigger::Certificates => "certificate files changed",
        })
    }
}

/// Keeps the file watcher alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

/// Watches `files` through their directories — editors (and cert-manager, and
/// Kubernetes secret volumes) save by writing a new file and renaming or re-linking it
/// over the old one, which replaces the inode a watch on the file itself would hold —
/// and sends `trigger` for each event that names one of them.
pub fn watch_files(
    files: &[PathBuf],
    trigger: Trigger,
    tx: mpsc::Sender<Trigger>,
) -> notify::Result<FileWatch> {
    let files: Vec<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            f.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    let names = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // Kubernetes swaps a `..data` symlink; any event in the directory of a watched
        // file whose name starts with ".." counts as a change of that file.
        let ours = event.paths.iter().any(|p| {
            names.contains(p)
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".."))
        });
        if ours {
            // A full channel already holds a pending reload, which will read the files anew.
            let _ = tx.try_send(trigger);
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(FileWatch { _watcher: watcher })
}

/// The config file's watch.
pub fn watch_file(file: &Path, tx: mpsc::Sender<Trigger>) -> notify::Result<FileWatch> {
    watch_files(&[file.to_path_buf()], Trigger::FileChanged, tx)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Sends a trigger on every SIGHUP, until the channel closes.
pub async fn on_sighup(tx: mpsc::Sender<Trigger>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot watch SIGHUP; reload through the file or the admin API");
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(Trigger::Signal).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

/// Reopens the access log on every SIGUSR1 (logrotate moved the file away), while the
/// proxy lives.
pub async fn on_sigusr1(proxy: std::sync::Weak<crate::proxy::Proxy>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        while usr1.recv().await.is_some() {
            let Some(proxy) = proxy.upgrade() else { return };
            if let Some(log) = proxy.access_log() {
                tracing::info!("reopening the access log");
                log.reopen();
            }
        }
    }
    #[cfg(not(unix))]
    drop(proxy);
}

/// Waits for the next trigger and folds in those that follow within [`DEBOUNCE`]. A
/// full reload re-reads certificates too, so it wins over a certificate-only change.
pub async fn next(rx: &mut mpsc::Receiver<Trigger>) -> Option<Trigger> {
    let mut got = rx.recv().await?;
    loop {
        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            Ok(Some(t)) => {
                if got == Trigger::Certificates {
                    got = t;
                }
            }
            Ok(None) | Err(_) => return Some(got),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_file_is_seen_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tether.yaml");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _w = watch_file(&file, tx).unwrap();
        // Write elsewhere and rename over it, as editors do.
        let tmp = dir.path().join(".tether.yaml.swp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), next(&mut rx)).await;
        assert_eq!(got.ok().flatten(), Some(Trigger::FileChanged));
    }

    #[tokio::test]
    async fn other_files_in_the_directory_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tether.yaml");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _w = watch_file(&file, tx).unwrap();
        std::fs::write(dir.path().join("other.yaml"), "b").unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), next(&mut rx)).await;
        assert!(got.is_err(), "{got:?}");
    }
}
