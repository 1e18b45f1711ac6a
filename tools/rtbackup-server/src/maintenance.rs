//! Per-volume maintenance: every volume the server has open gets one thread
//! that advances its image after commits, moves a delayed image with the
//! clock and folds history that left the retention window into the base
//! image. It runs for as long as the server has the volume open, whether or
//! not an agent is connected: a volume whose client is gone for a week
//! still sheds the history older than `--keep`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rtbackup_store::{ApplyOutcome, CompactOutcome, Volume};
use tracing::{debug, error};

/// How often an idle maintenance thread looks again: a restore may have
/// deferred the apply, and retention and the apply delay move with the
/// clock.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Pause between two fold steps when more history is waiting, so that the
/// other threads get the disk.
const FOLD_PAUSE: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct WakeState {
    wanted: bool,
    stop: bool,
}

/// Wakes a volume's maintenance thread.
#[derive(Default)]
pub(crate) struct Waker {
    state: Mutex<WakeState>,
    cv: Condvar,
}

impl Waker {
    /// Asks for an apply now (records were committed).
    pub(crate) fn want(&self) {
        lock(&self.state).wanted = true;
        self.cv.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    /// Waits until asked, stopped, or [`IDLE_WAKE`] passed (unless `busy`:
    /// then returns at once). Returns whether the thread is to stop.
    fn wait(&self, busy: bool) -> bool {
        let mut st = lock(&self.state);
        if !busy && !st.wanted && !st.stop {
            let (g, _) = self
                .cv
                .wait_timeout(st, IDLE_WAKE)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
        }
        st.wanted = false;
        st.stop
    }
}

/// An open volume with its maintenance thread.
pub(crate) struct Maintained {
    pub(crate) volume: Arc<Volume>,
    pub(crate) waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Maintained {
    /// Starts the maintenance thread of `volume`.
    pub(crate) fn start(volume: Volume) -> std::io::Result<Self> {
        let volume = Arc::new(volume);
        let waker = Arc::new(Waker::default());
        let (v, w) = (Arc::clone(&volume), Arc::clone(&waker));
        let thread = thread::Builder::new()
            .name(format!("maint-{}", volume.name()))
            .spawn(move || run(&v, &w))?;
        Ok(Self {
            volume,
            waker,
            thread: Some(thread),
        })
    }
}

/// Dropping stops the thread (after a last apply) and waits for it.
impl Drop for Maintained {
    fn drop(&mut self) {
        self.waker.stop();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!(volume = self.volume.name(), "maintenance thread panicked");
            }
        }
    }
}

fn run(vol: &Volume, waker: &Waker) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(vol, waker)));
    if r.is_err() {
        error!(
            volume = vol.name(),
            "maintenance thread panicked; the image advances when the volume is next opened"
        );
    }
}

/// Applies when asked and at least every [`IDLE_WAKE`], then folds one
/// step of history past retention. Makes a last apply when stopped.
fn run_inner(vol: &Volume, waker: &Waker) {
    // A volume just opened may have durable records to apply: go at once.
    let mut busy = true;
    loop {
        let stop = waker.wait(busy);
        // Deferred by a restore: the next round (at most IDLE_WAKE away)
        // tries again.
        match vol.apply(false) {
            Ok(ApplyOutcome::Applied {
                checkpoint,
                records,
            }) => debug!(
                volume = vol.name(),
                seq = checkpoint.seq,
                records,
                "image advanced"
            ),
            Ok(ApplyOutcome::Deferred | ApplyOutcome::UpToDate) => {}
            // Ingest goes on (the journal holds the records); the next
            // round tries again.
            Err(e) => error!(volume = vol.name(), "cannot advance the image: {e}"),
        }
        if stop {
            return;
        }
        // One bounded step of folding old history per round, so that
        // applying new records is never held up for long.
        busy = match vol.compact() {
            Ok(CompactOutcome::Folded {
                base,
                records,
                more,
            }) => {
                debug!(
                    volume = vol.name(),
                    seq = base.seq,
                    records,
                    "history folded into the base image"
                );
                more
            }
            Ok(CompactOutcome::Deferred | CompactOutcome::UpToDate) => false,
            Err(e) => {
                error!(volume = vol.name(), "cannot fold old history: {e}");
                false
            }
        };
        if busy {
            thread::sleep(FOLD_PAUSE);
        }
    }
}
