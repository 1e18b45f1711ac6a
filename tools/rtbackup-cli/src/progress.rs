//! Progress of a long operation (initial sync, resync, restore, verify):
//! a bar with rate and time left when stderr is a terminal (indicatif),
//! otherwise a plain line now and then and one at the end, written to
//! stderr or to the log.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often plain progress lines are written.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Where plain progress lines go when stderr is not a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// `WHAT: 64.0 MiB of 128.0 MiB (50%), 12.5 MiB/s, 5 s left` on stderr.
    Stderr,
    /// The same as an info event of the log (tracing), for daemons.
    Log,
}

/// The progress of one operation over `total` bytes.
pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    start: Instant,
    shown: Instant,
    interval: Duration,
    out: Out,
}

enum Out {
    Bar(ProgressBar),
    Lines(Lines),
}

impl Progress {
    /// A bar when stderr is a terminal, else lines to `lines`.
    pub fn new(what: impl Into<String>, total: u64, lines: Lines) -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar(what, total)
        } else {
            Self::lines(what, total, lines, LINE_INTERVAL)
        }
    }

    /// A bar on stderr.
    pub fn bar(what: impl Into<String>, total: u64) -> Self {
        let what = what.into();
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec}, {eta} left",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.clone());
        Self::with(what, total, Duration::ZERO, Out::Bar(bar))
    }

    /// Plain lines every `interval`, and one at the end.
    pub fn lines(what: impl Into<String>, total: u64, lines: Lines, interval: Duration) -> Self {
        Self::with(what.into(), total, interval, Out::Lines(lines))
    }

    /// Plain lines every `interval` instead of [`LINE_INTERVAL`].
    pub fn every(mut self, interval: Duration) -> Self {
        if matches!(self.out, Out::Lines(_)) {
            self.interval = interval;
        }
        self
    }

    fn with(what: String, total: u64, interval: Duration, out: Out) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            start: now,
            shown: now,
            interval,
            out,
        }
    }

    /// `n` more bytes done.
    pub fn add(&mut self, n: u64) {
        self.set(self.done.saturating_add(n));
    }

    /// `done` bytes done in all.
    pub fn set(&mut self, done: u64) {
        self.done = done.min(self.total);
        match &self.out {
            Out::Bar(bar) => bar.set_position(self.done),
            Out::Lines(to) => {
                if self.shown.elapsed() >= self.interval {
                    self.shown = Instant::now();
                    emit(*to, &self.line());
                }
            }
        }
    }

    /// The bytes done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The operation ended: the bar's last state stays, or a last line.
    pub fn finish(self) {
        match &self.out {
            Out::Bar(bar) => bar.finish(),
            Out::Lines(to) => emit(*to, &self.line()),
        }
    }

    /// `WHAT: DONE of TOTAL (P%), RATE, T left` (`done in T` at the end).
    pub fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let percent = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let when = if self.done >= self.total {
            format!("done in {}", seconds(secs))
        } else if rate > 0.0 {
            format!("{} left", seconds((self.total - self.done) as f64 / rate))
        } else {
            "time left unknown".to_owned()
        };
        format!(
            "{}: {} of {} ({percent:.0}%), {}/s, {when}",
            self.what,
            bytes(self.done as f64),
            bytes(self.total as f64),
            bytes(rate),
        )
    }
}

fn emit(to: Lines, line: &str) {
    match to {
        Lines::Stderr => eprintln!("{line}"),
        Lines::Log => tracing::info!("{line}"),
    }
}

/// `1.5 GiB`, `512 B`.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `42 s`, `3 min 5 s`, `2 h 10 min`.
fn seconds(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_how_much_how_fast_and_how_long() {
        let mut p = Progress::lines("restore", 128 << 20, Lines::Log, Duration::from_secs(3600));
        p.start = Instant::now() - Duration::from_secs(4);
        p.set(64 << 20);
        assert_eq!(
            p.line(),
            "restore: 64.0 MiB of 128.0 MiB (50%), 16.0 MiB/s, 4 s left"
        );
        p.add(64 << 20);
        assert_eq!(
            p.line(),
            "restore: 128.0 MiB of 128.0 MiB (100%), 32.0 MiB/s, done in 4 s"
        );
        // Never past the total.
        p.add(1);
        assert_eq!(p.done(), 128 << 20);
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * (1u64 << 40) as f64), "3.0 TiB");
        assert_eq!(seconds(59.4), "59 s");
        assert_eq!(seconds(185.0), "3 min 5 s");
        assert_eq!(seconds(7800.0), "2 h 10 min");
    }

    #[test]
    fn nothing_done_yet_has_no_time_left() {
        let p = Progress::lines("verify", 10, Lines::Stderr, LINE_INTERVAL);
        assert!(p.line().ends_with("time left unknown"), "{}", p.line());
        let p = Progress::lines("verify", 0, Lines::Stderr, LINE_INTERVAL);
        assert!(p.line().contains("(100%)"), "{}", p.line());
    }
}
