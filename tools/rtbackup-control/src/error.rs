//! The error type of this crate.
//!
//! Rules: every public function returns [`Result`]; an error names what was
//! being done and to what (device path, ioctl), and keeps the errno; messages
//! say what to do where that is known.

use nix::errno::Errno;
use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/dev/rtbackup-control` does not exist.
    #[error(
        "the rtbackup kernel module is not loaded ({path} is missing): run 'modprobe rtbackup'"
    )]
    NotLoaded {
        /// The control device path.
        path: PathBuf,
    },
    /// The caller may not use the control device.
    #[error("permission denied on {path}: rtbackupctl must run as root (CAP_SYS_ADMIN)")]
    PermissionDenied {
        /// The path refused.
        path: PathBuf,
    },
    /// The module speaks another ABI version.
    #[error("the loaded rtbackup module speaks ABI version {module} but this tool speaks {tool}: install matching versions")]
    AbiMismatch {
        /// The module's version.
        module: u32,
        /// Ours.
        tool: u32,
    },
    /// A lower device path does not exist.
    #[error("{path}: no such file or directory")]
    NoSuchPath {
        /// The path given.
        path: PathBuf,
    },
    /// A lower device path is not a block device.
    #[error("{path}: not a block device")]
    NotBlockDevice {
        /// The path given.
        path: PathBuf,
    },
    /// The lower device is already attached.
    #[error("{path} is already attached as /dev/{disk}")]
    AlreadyAttached {
        /// The path given.
        path: PathBuf,
        /// The stacked disk over it.
        disk: String,
    },
    /// The lower device is in use by somebody else.
    #[error("{path} is in use{}: unmount it or stop its user first", .user.as_deref().map(|u| format!(" ({u})")).unwrap_or_default())]
    LowerBusy {
        /// The path given.
        path: PathBuf,
        /// Who uses it, when known (a mount point, a holder).
        user: Option<String>,
    },
    /// An rtbackup device cannot be the lower device of another.
    #[error("{path} is itself an rtbackup device")]
    StackedOnItself {
        /// The path given.
        path: PathBuf,
    },
    /// A chunk size outside the ABI's limits.
    #[error("chunk size {size} is not a power of two from {min} to {max} bytes")]
    BadChunkSize {
        /// The size asked for.
        size: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A block timeout beyond the ABI's limit.
    #[error("block timeout {} is longer than {}", humantime::format_duration(*.timeout), humantime::format_duration(*.max))]
    BadBlockTimeout {
        /// The timeout asked for.
        timeout: std::time::Duration,
        /// The longest allowed.
        max: std::time::Duration,
    },
    /// A change of settings that names none.
    #[error("nothing to change: give --on-full or --block-timeout")]
    NothingToSet,
    /// A mark was asked for while the device tracks writes in its bitmap.
    #[error("/dev/{disk} is tracking writes in its dirty bitmap (its ring overflowed): there is no write order to put a mark in until rtbackup-agent's resync completes; try again then")]
    Tracking {
        /// The stacked disk.
        disk: String,
    },
    /// The module answered something that cannot be right.
    #[error("the rtbackup module answered inconsistently: {0}")]
    Inconsistent(String),
    /// A ring size the module would refuse.
    #[error("ring size {size} is not a power of two between {min} and {max} bytes")]
    BadRingSize {
        /// The size asked for.
        size: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The kernel could not allocate the ring.
    #[error("the kernel could not allocate a ring of {size} bytes: choose a smaller --ring-size")]
    RingNoMemory {
        /// The size asked for (0: the default).
        size: u64,
    },
    /// Another agent holds the ring.
    #[error("the ring of /dev/{disk} is already open: another rtbackup-agent serves this device")]
    RingBusy {
        /// `rtbackupN`.
        disk: String,
    },
    /// The lower device is of a kind the module cannot stack on.
    #[error("{path}: zoned block devices are not supported")]
    Zoned {
        /// The path given.
        path: PathBuf,
    },
    /// The device to detach is open (mounted, or held open by a process).
    #[error(
        "/dev/{disk} is in use ({openers} opener(s)): unmount it and close it before detaching"
    )]
    DeviceBusy {
        /// The stacked disk.
        disk: String,
        /// How many openers it has.
        openers: u32,
    },
    /// No attached device matches.
    #[error("{name}: no such rtbackup device (see 'rtbackupctl status')")]
    NoSuchDevice {
        /// What the user named.
        name: String,
    },
    /// An argument that cannot name a device.
    #[error("{name}: not an rtbackup device name (expected /dev/rtbackupN, rtbackupN or N)")]
    BadDeviceName {
        /// What the user named.
        name: String,
    },
    /// A path longer than the ABI allows.
    #[error("{path}: path longer than {max} bytes")]
    PathTooLong {
        /// The path given.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A mark name the module would refuse.
    #[error("invalid mark name \"{name}\": {reason} (a mark name is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.')")]
    BadMarkName {
        /// The name given (at most 80 characters of it).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory to freeze is not on the device to mark.
    #[error("{path} is not on {device} but on device {found}: give the mount point of the filesystem on {device}")]
    NotOnDevice {
        /// The directory given.
        path: PathBuf,
        /// `/dev/rtbackupN`.
        device: String,
        /// `major:minor` of the device it is on.
        found: String,
    },
    /// The filesystem could not be frozen; nothing was frozen.
    #[error("cannot freeze {path}: {errno}{}", freeze_hint(*.errno))]
    Freeze {
        /// The mount point.
        path: PathBuf,
        /// The errno of `FIFREEZE`.
        errno: Errno,
    },
    /// The filesystem stayed frozen.
    #[error("THAW FAILED: {path} is still frozen ({errno}) and writers to it hang: run 'fsfreeze --unfreeze {path}' now")]
    Thaw {
        /// The mount point.
        path: PathBuf,
        /// The errno of `FITHAW`.
        errno: Errno,
    },
    /// Any other system call failure.
    #[error("{op} failed: {errno}")]
    Sys {
        /// What was being done.
        op: String,
        /// The errno.
        errno: Errno,
    },
}

impl Error {
    /// A failed system call: what was being done, and the errno.
    pub fn sys(op: impl Into<String>, errno: Errno) -> Self {
        Self::Sys {
            op: op.into(),
            errno,
        }
    }

    /// The errno underneath, if the error came from a system call.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Sys { errno, .. } => Some(*errno),
            Self::NotLoaded { .. } | Self::NoSuchPath { .. } => Some(Errno::ENOENT),
            Self::PermissionDenied { .. } => Some(Errno::EACCES),
            Self::AbiMismatch { .. } => Some(Errno::EPROTO),
            Self::NotBlockDevice { .. } => Some(Errno::ENOTBLK),
            Self::AlreadyAttached { .. } | Self::LowerBusy { .. } | Self::DeviceBusy { .. } => {
                Some(Errno::EBUSY)
            }
            Self::NoSuchDevice { .. } => Some(Errno::ENXIO),
            Self::StackedOnItself { .. } | Self::BadDeviceName { .. } => Some(Errno::EINVAL),
            Self::PathTooLong { .. } => Some(Errno::ENAMETOOLONG),
            Self::Zoned { .. } => Some(Errno::EOPNOTSUPP),
            Self::BadRingSize { .. }
            | Self::BadChunkSize { .. }
            | Self::BadBlockTimeout { .. }
            | Self::NothingToSet => Some(Errno::EINVAL),
            Self::RingNoMemory { .. } => Some(Errno::ENOMEM),
            Self::RingBusy { .. } => Some(Errno::EBUSY),
            Self::BadMarkName { .. } => Some(Errno::EINVAL),
            Self::NotOnDevice { .. } => Some(Errno::EXDEV),
            Self::Freeze { errno, .. } | Self::Thaw { errno, .. } => Some(*errno),
            Self::Inconsistent(_) => Some(Errno::EIO),
            Self::Tracking { .. } => Some(Errno::EBUSY),
        }
    }
}

/// What to do when `FIFREEZE` fails with `errno`.
fn freeze_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EBUSY => ": it is frozen already (thaw it with 'fsfreeze --unfreeze')",
        Errno::EOPNOTSUPP => ": its filesystem cannot be frozen; mark without --freeze",
        Errno::EPERM | Errno::EACCES => ": freezing needs root (CAP_SYS_ADMIN)",
        _ => "",
    }
}
