//! The executor hyper spawns HTTP/2 streams on, tied to the backend's accept task.

use tokio::sync::watch;

/// Spawns each HTTP/2 stream on the current tokio runtime, to end early when the
/// [`Lifeline`] it was made from is dropped — that is, when the accept task ends or is aborted.
///
/// Without it a stream waiting in `/delay/<ms>` would outlive a killed backend by up to `ms`.
#[derive(Debug, Clone)]
pub(crate) struct StreamExecutor {
    alive: watch::Receiver<()>,
}

/// Held by the accept task; streams spawned through its executor end when it is dropped.
#[derive(Debug)]
pub(crate) struct Lifeline {
    _sender: watch::Sender<()>,
}

impl Lifeline {
    pub(crate) fn new() -> (Lifeline, StreamExecutor) {
        let (tx, alive) = watch::channel(());
        (Lifeline { _sender: tx }, StreamExecutor { alive })
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut alive = self.alive.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = future => {}
                // Nothing is ever sent: this resolves only when the `Lifeline` is dropped.
                _ = alive.changed() => {}
            }
        });
    }
}
