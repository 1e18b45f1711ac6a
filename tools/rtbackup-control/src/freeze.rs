//! Making the moment of a mark a consistency point: flushing a device, and
//! freezing the filesystem on it (`fsfreeze`).

use crate::diagnose::devt_string;
use crate::error::{Error, Result};
use crate::ioctl;
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Flushes the block device at `device`: writes back its page cache and
/// sends a cache flush (`fsync` of a block device), which the module records
/// as a consistency point after every write completed before it.
pub fn flush_device(device: &str) -> Result<()> {
    let file =
        File::open(device).map_err(|e| Error::sys(format!("open {device}"), io_errno(&e)))?;
    file.sync_all()
        .map_err(|e| Error::sys(format!("flush {device}"), io_errno(&e)))
}

/// Signals that would kill the process while the filesystem is frozen; they
/// are held back until it is thawed.
const HELD_SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTSTP,
];

/// Blocks [`HELD_SIGNALS`] in this thread; returns the previous mask.
fn hold_signals() -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data that `sigemptyset` initialises; the
    // pointers passed are to locals that outlive the calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HELD_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Restores the signal mask `old` (pending signals are delivered now).
fn release_signals(old: &libc::sigset_t) {
    // SAFETY: `old` is a mask returned by `pthread_sigmask`.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// A filesystem frozen with `FIFREEZE`: its dirty data and journal are on
/// the device, it is clean (no recovery needed when mounted from a copy),
/// and writers to it wait. Thawed by [`Frozen::thaw`] or, failing that,
/// when dropped. Termination signals are held back meanwhile, so that an
/// interrupt cannot leave the filesystem frozen.
pub struct Frozen {
    dir: File,
    path: PathBuf,
    old_mask: libc::sigset_t,
    thawed: bool,
}

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen")
            .field("path", &self.path)
            .field("thawed", &self.thawed)
            .finish_non_exhaustive()
    }
}

impl Frozen {
    /// Freezes the filesystem mounted at `path`, which must be on the block
    /// device `devt` (`major:minor`, e.g. of `/dev/rtbackupN`) called
    /// `device`; otherwise nothing is frozen.
    pub fn freeze(path: &Path, device: &str, devt: &str) -> Result<Self> {
        let dir = File::open(path)
            .map_err(|e| Error::sys(format!("open {}", path.display()), io_errno(&e)))?;
        let meta = dir
            .metadata()
            .map_err(|e| Error::sys(format!("stat {}", path.display()), io_errno(&e)))?;
        let found = devt_string(meta.dev());
        if found != devt {
            return Err(Error::NotOnDevice {
                path: path.to_path_buf(),
                device: device.to_owned(),
                found,
            });
        }
        let old_mask = hold_signals();
        let mut arg: libc::c_int = 0;
        // SAFETY: `dir` is an open file; FIFREEZE ignores its argument, which
        // is a valid int anyway.
        if let Err(errno) = unsafe { ioctl::fifreeze(dir.as_raw_fd(), &mut arg) } {
            release_signals(&old_mask);
            return Err(Error::Freeze {
                path: path.to_path_buf(),
                errno,
            });
        }
        tracing::debug!(path = %path.display(), "frozen");
        Ok(Self {
            dir,
            path: path.to_path_buf(),
            old_mask,
            thawed: false,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn thaw_now(&mut self) -> Result<()> {
        self.thawed = true;
        let mut arg: libc::c_int = 0;
        // SAFETY: as in `freeze`.
        let r = unsafe { ioctl::fithaw(self.dir.as_raw_fd(), &mut arg) };
        release_signals(&self.old_mask);
        r.map_err(|errno| Error::Thaw {
            path: self.path.clone(),
            errno,
        })?;
        tracing::debug!(path = %self.path.display(), "thawed");
        Ok(())
    }

    /// Thaws the filesystem. An error means that it is still frozen: tell
    /// the user, loudly.
    pub fn thaw(mut self) -> Result<()> {
        self.thaw_now()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            if let Err(e) = self.thaw_now() {
                tracing::error!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_on_another_device_is_not_frozen() {
        let e = Frozen::freeze(Path::new("/"), "/dev/rtbackup0", "4095:1048575").unwrap_err();
        assert!(matches!(e, Error::NotOnDevice { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("/ is not on /dev/rtbackup0 but on device"),
            "{msg}"
        );
    }

    #[test]
    fn freeze_errors_say_what_to_do() {
        let e = Error::Freeze {
            path: "/mnt".into(),
            errno: Errno::EBUSY,
        };
        assert!(e.to_string().contains("frozen already"), "{e}");
        let e = Error::Thaw {
            path: "/mnt".into(),
            errno: Errno::EINVAL,
        };
        assert!(e.to_string().contains("fsfreeze --unfreeze /mnt"), "{e}");
    }

    #[test]
    fn flushing_a_missing_device_names_it() {
        let e = flush_device("/nonexistent/rtbackup9").unwrap_err();
        assert!(e.to_string().contains("open /nonexistent/rtbackup9"), "{e}");
    }
}
