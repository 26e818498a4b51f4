//! `--watch-config`: notices when the config file changes.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

/// How often the file is looked at: a `stat` a second costs nothing, needs no inotify (which
/// misses editors that replace the file, and does not exist everywhere), and is what a human
/// editing a file can wait for.
const EVERY: Duration = Duration::from_secs(1);

/// Sends `()` each time `path` changes (modification time, size, or appearing again after it
/// was replaced) and then stays unchanged for a second, so that a file still being written is
/// not read half-way; until `shutdown` completes.
pub(crate) fn watch(
    path: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut applied = stamp(&path);
        let mut seen = applied;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&path);
            // Changed since the last reload, and the same as a tick ago; a file being replaced
            // may be missing for a moment: wait until it is back.
            if now.is_some() && now != applied && now == seen {
                applied = now;
                // Full means a reload is already pending, which will read this change too.
                let _ = tx.try_send(());
            }
            seen = now;
        }
    });
    rx
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
