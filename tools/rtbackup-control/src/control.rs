//! The control device and its operations.

use crate::diagnose::{devt_string, user_of};
use crate::error::{Error, Result};
use crate::ioctl;
use crate::status::DeviceStatus;
use nix::errno::Errno;
use rtbackup_abi::{
    c_str_bytes, check_mark_name, RtbAttach, RtbDetach, RtbDeviceInfo, RtbDirty, RtbList, RtbMark,
    RtbResync, RtbRingAck, RtbRingOpen, RtbVersion, RTB_ABI_VERSION, RTB_ACK_CONNECTED,
    RTB_ACK_SPOOLED, RTB_ATTACH_TRACK, RTB_CHUNK_MAX, RTB_CHUNK_MIN, RTB_DISK_PREFIX,
    RTB_MAX_DEVICES, RTB_PATH_MAX, RTB_RESYNC_DONE, RTB_RESYNC_FETCH, RTB_RESYNC_F_PENDING,
    RTB_RESYNC_F_STREAM, RTB_RESYNC_TRACK_ALL, RTB_RING_MAX_SIZE, RTB_RING_MIN_SIZE,
};
use rtbackup_abi::{
    RtbSet, RTB_BLOCK_TIMEOUT_MAX_MS, RTB_ON_FULL_BLOCK, RTB_ON_FULL_TRACK, RTB_SET_BLOCK_TIMEOUT,
    RTB_SET_ON_FULL,
};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a device does when its ring is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFull {
    /// Track writes in the dirty bitmap; the agent resyncs them later.
    #[default]
    Track,
    /// Make writers wait for room (for the block timeout at most).
    Block,
}

/// How to attach a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Bytes of the ring's data area (0: the module's default).
    pub ring_size: u64,
    /// Bytes per dirty-bitmap chunk (0: the module's default, 64 KiB).
    pub chunk_size: u64,
    /// What a full ring does.
    pub on_full: OnFull,
    /// With [`OnFull::Block`], how long writers wait before the ring
    /// tracks instead (zero: as long as it takes).
    pub block_timeout: Duration,
}

/// The block timeout in the ABI's milliseconds, or the error that says it
/// is too long. A nonzero timeout under a millisecond is one.
fn block_timeout_ms(d: Duration) -> Result<u32> {
    let max = Duration::from_millis(u64::from(RTB_BLOCK_TIMEOUT_MAX_MS));
    if d > max {
        return Err(Error::BadBlockTimeout { timeout: d, max });
    }
    let ms = d.as_millis().max(u128::from(!d.is_zero()));
    Ok(u32::try_from(ms).unwrap_or(RTB_BLOCK_TIMEOUT_MAX_MS))
}

/// Where the module's control device appears.
pub const CONTROL_PATH: &str = "/dev/rtbackup-control";

/// The module's version, as it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleVersion {
    /// ABI version spoken by the module.
    pub abi_version: u32,
    /// Release of the module.
    pub release: String,
}

/// Result of a successful attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedDevice {
    /// `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// `/dev/rtbackupN`.
    pub device: String,
    /// The lower device.
    pub lower: String,
}

/// An open control device whose module speaks our ABI version.
#[derive(Debug)]
pub struct Control {
    file: File,
    path: PathBuf,
    version: ModuleVersion,
}

impl Control {
    /// Opens [`CONTROL_PATH`].
    pub fn open() -> Result<Self> {
        Self::open_path(CONTROL_PATH)
    }

    /// Opens the control device at `path` and checks the ABI version.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotLoaded { path: path.clone() },
                std::io::ErrorKind::PermissionDenied => {
                    Error::PermissionDenied { path: path.clone() }
                }
                _ => Error::sys(
                    format!("open {}", path.display()),
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                ),
            })?;
        let mut v = RtbVersion::ZERO;
        // SAFETY: `v` is a valid `RtbVersion` for the kernel to fill.
        unsafe { ioctl::version(file.as_raw_fd(), &mut v) }.map_err(|errno| match errno {
            Errno::ENOTTY => Error::sys(
                format!("{}: not an rtbackup control device", path.display()),
                errno,
            ),
            // Every ioctl, even this one, needs CAP_SYS_ADMIN.
            Errno::EPERM | Errno::EACCES => Error::PermissionDenied { path: path.clone() },
            _ => Error::sys("RTB_IOC_VERSION", errno),
        })?;
        let version = ModuleVersion {
            abi_version: v.abi_version,
            release: String::from_utf8_lossy(c_str_bytes(&v.release).unwrap_or(&[])).into_owned(),
        };
        if version.abi_version != RTB_ABI_VERSION {
            return Err(Error::AbiMismatch {
                module: version.abi_version,
                tool: RTB_ABI_VERSION,
            });
        }
        Ok(Self {
            file,
            path,
            version,
        })
    }

    /// The module's version.
    pub fn version(&self) -> &ModuleVersion {
        &self.version
    }

    fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    fn permission(&self, errno: Errno, op: &str) -> Error {
        match errno {
            Errno::EPERM | Errno::EACCES => Error::PermissionDenied {
                path: self.path.clone(),
            },
            Errno::EPROTO => Error::AbiMismatch {
                module: self.version.abi_version,
                tool: RTB_ABI_VERSION,
            },
            _ => Error::sys(op, errno),
        }
    }

    /// All attached devices, by index.
    pub fn list(&self) -> Result<Vec<DeviceStatus>> {
        let mut infos = vec![RtbDeviceInfo::ZERO; RTB_MAX_DEVICES as usize];
        let mut req = RtbList::ZERO;
        req.abi_version = RTB_ABI_VERSION;
        req.capacity = RTB_MAX_DEVICES;
        req.devices = infos.as_mut_ptr() as u64;
        // SAFETY: `req.devices` points to `capacity` writable entries that
        // outlive the call.
        unsafe { ioctl::list(self.fd(), &mut req) }
            .map_err(|e| self.permission(e, "RTB_IOC_LIST"))?;
        let n = (req.count as usize).min(infos.len());
        Ok(infos[..n].iter().map(DeviceStatus::from).collect())
    }

    /// Stacks `/dev/rtbackupN` on the block device at `lower`, as `opts`
    /// say.
    pub fn attach(&self, lower: &Path, opts: &AttachOptions) -> Result<AttachedDevice> {
        let ring_size = opts.ring_size;
        if opts.chunk_size != 0
            && (!opts.chunk_size.is_power_of_two()
                || !(RTB_CHUNK_MIN..=RTB_CHUNK_MAX).contains(&opts.chunk_size))
        {
            return Err(Error::BadChunkSize {
                size: opts.chunk_size,
                min: RTB_CHUNK_MIN,
                max: RTB_CHUNK_MAX,
            });
        }
        if ring_size != 0
            && (!ring_size.is_power_of_two()
                || !(RTB_RING_MIN_SIZE..=RTB_RING_MAX_SIZE).contains(&ring_size))
        {
            return Err(Error::BadRingSize {
                size: ring_size,
                min: RTB_RING_MIN_SIZE,
                max: RTB_RING_MAX_SIZE,
            });
        }
        let meta = std::fs::metadata(lower).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoSuchPath {
                path: lower.to_path_buf(),
            },
            _ => Error::sys(
                format!("stat {}", lower.display()),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            ),
        })?;
        if !meta.file_type().is_block_device() {
            return Err(Error::NotBlockDevice {
                path: lower.to_path_buf(),
            });
        }
        let devt = devt_string(meta.rdev());
        let devices = self.list()?;
        if let Some(d) = devices.iter().find(|d| d.lower_devt == devt) {
            return Err(Error::AlreadyAttached {
                path: lower.to_path_buf(),
                disk: d.disk_name().to_owned(),
            });
        }
        if devices.iter().any(|d| d.devt == devt) {
            return Err(Error::StackedOnItself {
                path: lower.to_path_buf(),
            });
        }
        let abs = std::fs::canonicalize(lower).unwrap_or_else(|_| lower.to_path_buf());
        let bytes = abs.as_os_str().as_encoded_bytes();
        if bytes.len() >= RTB_PATH_MAX || bytes.contains(&0) {
            return Err(Error::PathTooLong {
                path: abs,
                max: RTB_PATH_MAX - 1,
            });
        }
        let mut req = RtbAttach::ZERO;
        req.abi_version = RTB_ABI_VERSION;
        req.lower_path[..bytes.len()].copy_from_slice(bytes);
        req.ring_size = ring_size;
        req.chunk_size = opts.chunk_size;
        req.block_timeout_ms = block_timeout_ms(opts.block_timeout)?;
        if opts.on_full == OnFull::Track {
            req.flags |= RTB_ATTACH_TRACK;
        }
        tracing::debug!(path = %abs.display(), "RTB_IOC_ATTACH");
        // SAFETY: `req` is a valid `RtbAttach` for the kernel to read and fill.
        unsafe { ioctl::attach(self.fd(), &mut req) }.map_err(|errno| match errno {
            Errno::EBUSY => Error::LowerBusy {
                path: lower.to_path_buf(),
                user: user_of(&devt),
            },
            Errno::EINVAL if self.list().is_ok_and(|l| l.iter().any(|d| d.devt == devt)) => {
                Error::StackedOnItself {
                    path: lower.to_path_buf(),
                }
            }
            Errno::ENOENT => Error::NoSuchPath {
                path: lower.to_path_buf(),
            },
            Errno::ENOTBLK => Error::NotBlockDevice {
                path: lower.to_path_buf(),
            },
            Errno::ENOMEM => Error::RingNoMemory { size: ring_size },
            Errno::EOPNOTSUPP => Error::Zoned {
                path: lower.to_path_buf(),
            },
            _ => self.permission(errno, &format!("attach {}", lower.display())),
        })?;
        Ok(AttachedDevice {
            index: req.index,
            device: format!("/dev/{RTB_DISK_PREFIX}{}", req.index),
            lower: abs.display().to_string(),
        })
    }

    /// Finds the attached device that `name` refers to: `/dev/rtbackupN`
    /// (or a symlink to it), `rtbackupN`, `N`, or the lower device's path.
    pub fn resolve(&self, name: &str) -> Result<DeviceStatus> {
        let devices = self.list()?;
        let no_such = || Error::NoSuchDevice {
            name: name.to_owned(),
        };
        if let Ok(meta) = std::fs::metadata(name) {
            if meta.file_type().is_block_device() {
                let devt = devt_string(meta.rdev());
                return devices
                    .iter()
                    .find(|d| d.devt == devt)
                    .or_else(|| devices.iter().find(|d| d.lower_devt == devt))
                    .cloned()
                    .ok_or_else(no_such);
            }
        }
        let index = parse_index(name).ok_or_else(|| Error::BadDeviceName {
            name: name.to_owned(),
        })?;
        devices
            .into_iter()
            .find(|d| d.index == index)
            .ok_or_else(no_such)
    }

    /// Changes what the full ring of device `index` does: `on_full`, the
    /// block timeout, or both (`None`: as it is). Writers waiting for room
    /// go on at once when it becomes [`OnFull::Track`].
    pub fn set_full_policy(
        &self,
        index: u32,
        on_full: Option<OnFull>,
        block_timeout: Option<Duration>,
    ) -> Result<()> {
        let mut req = RtbSet::ZERO;
        req.abi_version = RTB_ABI_VERSION;
        req.index = index;
        if let Some(on_full) = on_full {
            req.flags |= RTB_SET_ON_FULL;
            req.on_full = match on_full {
                OnFull::Track => RTB_ON_FULL_TRACK,
                OnFull::Block => RTB_ON_FULL_BLOCK,
            };
        }
        if let Some(timeout) = block_timeout {
            req.flags |= RTB_SET_BLOCK_TIMEOUT;
            req.block_timeout_ms = block_timeout_ms(timeout)?;
        }
        if req.flags == 0 {
            return Err(Error::NothingToSet);
        }
        let disk = format!("{RTB_DISK_PREFIX}{index}");
        tracing::debug!(disk, ?on_full, ?block_timeout, "RTB_IOC_SET");
        // SAFETY: `req` is a valid `RtbSet` for the kernel to read.
        unsafe { ioctl::set(self.fd(), &req) }.map_err(|errno| match errno {
            Errno::ENXIO => Error::NoSuchDevice { name: disk.clone() },
            _ => self.permission(errno, &format!("change {disk}")),
        })?;
        Ok(())
    }

    /// Removes the device `index`. Refused while it is open or mounted.
    pub fn detach(&self, index: u32) -> Result<()> {
        let mut req = RtbDetach::ZERO;
        req.abi_version = RTB_ABI_VERSION;
        req.index = index;
        let disk = format!("{RTB_DISK_PREFIX}{index}");
        // SAFETY: `req` is a valid `RtbDetach` for the kernel to read.
        unsafe { ioctl::detach(self.fd(), &req) }.map_err(|errno| match errno {
            Errno::EBUSY => Error::DeviceBusy {
                openers: self
                    .list()
                    .ok()
                    .and_then(|l| l.into_iter().find(|d| d.index == index))
                    .map_or(1, |d| d.open_count),
                disk: disk.clone(),
            },
            Errno::ENXIO => Error::NoSuchDevice { name: disk.clone() },
            _ => self.permission(errno, &format!("detach {disk}")),
        })?;
        Ok(())
    }
}

impl Control {
    /// Opens the write-journal ring of device `index`: the agent's handle.
    /// Only one may be open per device.
    pub fn ring_open(&self, index: u32) -> Result<OwnedFd> {
        let mut req = RtbRingOpen::ZERO;
        req.abi_version = RTB_ABI_VERSION;
        req.index = index;
        let disk = format!("{RTB_DISK_PREFIX}{index}");
        // SAFETY: `req` is a valid `RtbRingOpen` for the kernel to read and
        // fill.
        let fd = unsafe { ioctl::ring_open(self.fd(), &req) }.map_err(|errno| match errno {
            Errno::EBUSY => Error::RingBusy { disk: disk.clone() },
            Errno::ENXIO => Error::NoSuchDevice { name: disk.clone() },
            _ => self.permission(errno, &format!("open the ring of {disk}")),
        })?;
        // SAFETY: the ioctl returned a new file descriptor that nobody else
        // owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Control {
    /// Puts a mark named `name` in the record stream of device `index`,
    /// after every record written so far, and returns the mark record's
    /// `seq`. The backup server resolves a mark to the newest consistency
    /// point at or before it: flush the device first
    /// ([`crate::flush_device`]), or freeze its filesystem
    /// ([`crate::Frozen`]) and flush, so that this point is now. Waits,
    /// like a writer, while the device's ring is full.
    pub fn mark(&self, index: u32, name: &str) -> Result<u64> {
        let mut req = mark_request(index, name)?;
        let disk = format!("{RTB_DISK_PREFIX}{index}");
        tracing::debug!(disk, name, "RTB_IOC_MARK");
        // SAFETY: `req` is a valid `RtbMark` for the kernel to read and fill.
        unsafe { ioctl::mark(self.fd(), &mut req) }.map_err(|errno| match errno {
            Errno::ENXIO => Error::NoSuchDevice { name: disk.clone() },
            Errno::EBUSY => Error::Tracking { disk: disk.clone() },
            _ => self.permission(errno, &format!("mark {disk} as '{name}'")),
        })?;
        Ok(req.seq)
    }
}

impl Control {
    /// Marks `chunks` (chunk numbers, at most the device's `chunks`) of
    /// device `index` dirty and starts tracking, so that its agent resyncs
    /// them (`RTB_IOC_DIRTY`). Returns how many were newly marked.
    pub fn dirty(&self, index: u32, chunk_count: u64, chunks: &[u64]) -> Result<u64> {
        let mut words = vec![0u64; chunk_count.div_ceil(64) as usize];
        for &c in chunks {
            let Some(w) = words.get_mut((c / 64) as usize).filter(|_| c < chunk_count) else {
                return Err(Error::Inconsistent(format!(
                    "chunk {c} is past the device's {chunk_count} chunks"
                )));
            };
            *w |= 1 << (c % 64);
        }
        for w in &mut words {
            *w = w.to_le();
        }
        let mut req = RtbDirty::ZERO;
        req.abi_version = RTB_ABI_VERSION;
        req.index = index;
        req.bitmap = words.as_ptr() as u64;
        req.bitmap_bytes = (words.len() * 8) as u64;
        let disk = format!("{RTB_DISK_PREFIX}{index}");
        // SAFETY: `req` is a valid `RtbDirty`; `bitmap` points to
        // `bitmap_bytes` readable bytes that live until the call returns.
        unsafe { ioctl::dirty(self.fd(), &mut req) }.map_err(|errno| match errno {
            Errno::ENXIO => Error::NoSuchDevice { name: disk.clone() },
            _ => self.permission(errno, &format!("mark chunks of {disk} dirty")),
        })?;
        Ok(req.count)
    }
}

/// Checks a mark name as the module does: 1 to 64 characters from
/// `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_mark_name(name: &str) -> Result<()> {
    check_mark_name(name.as_bytes()).map_err(|reason| Error::BadMarkName {
        name: name.chars().take(80).collect(),
        reason,
    })
}

/// The `RTB_IOC_MARK` request for mark `name` of device `index`; the name
/// is checked as the module checks it.
fn mark_request(index: u32, name: &str) -> Result<RtbMark> {
    validate_mark_name(name)?;
    let bytes = name.as_bytes();
    let mut req = RtbMark::ZERO;
    req.abi_version = RTB_ABI_VERSION;
    req.index = index;
    req.name_len = bytes.len() as u32;
    req.name[..bytes.len()].copy_from_slice(bytes);
    Ok(req)
}

/// An acknowledgement to a ring ([`ring_ack`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingAck {
    /// The new consumer position: the end of a record between the current
    /// tail and head (the current tail: only reports `connected`).
    pub tail: u64,
    /// The highest seq the server holds durably (0: not given): the ring's
    /// `tail_seq` passes seqs reserved for resync records up to it.
    pub acked_seq: u64,
    /// The agent is connected to the server.
    pub connected: bool,
    /// The records before `tail` are in the agent's spool; the server
    /// holds only those up to `acked_seq` (`RTB_ACK_SPOOLED`).
    pub spooled: bool,
}

/// Tells the kernel, on a ring file descriptor from [`Control::ring_open`],
/// that the records before byte position `ack.tail` may leave the ring
/// (durable on the server, or in the agent's spool), what the server holds,
/// and whether the agent is connected to it.
pub fn ring_ack(ring: BorrowedFd<'_>, ack: &RingAck) -> Result<()> {
    let mut req = RtbRingAck::ZERO;
    req.abi_version = RTB_ABI_VERSION;
    req.tail = ack.tail;
    req.acked_seq = ack.acked_seq;
    if ack.connected {
        req.flags |= RTB_ACK_CONNECTED;
    }
    if ack.spooled {
        req.flags |= RTB_ACK_SPOOLED;
    }
    // SAFETY: `req` is a valid `RtbRingAck` for the kernel to read.
    unsafe { ioctl::ring_ack(ring.as_raw_fd(), &req) }
        .map_err(|errno| Error::sys(format!("RTB_RING_IOC_ACK to position {}", ack.tail), errno))?;
    Ok(())
}

/// What [`ring_resync`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncOp {
    /// Mark every chunk dirty and start tracking (an initial sync).
    TrackAll,
    /// Fetch dirty chunks: with `pending`, also those of an unfinished
    /// resync; with `stream`, return to recording in the same step.
    Fetch { pending: bool, stream: bool },
    /// The resync is complete: forget its chunks.
    Done,
}

/// The kernel's answer to [`ring_resync`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resync {
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chunks of the device.
    pub chunks: u64,
    /// Fetch: the chunks returned, in order.
    pub dirty: Vec<u64>,
    /// Fetch: the first seq reserved for them (one per chunk, in order, plus
    /// one for the end record when streaming again).
    pub first_seq: u64,
    /// Fetch: the ring position where the reserved seqs sit.
    pub head: u64,
}

/// One resync step on a ring file descriptor from [`Control::ring_open`]
/// (`RTB_RING_IOC_RESYNC`; Documentation/design.rst, "Overflow and
/// resync").
/// `chunks` is the device's chunk count (from its status), which sizes the
/// bitmap buffer of a fetch.
pub fn ring_resync(ring: BorrowedFd<'_>, op: ResyncOp, chunks: u64) -> Result<Resync> {
    let mut req = RtbResync::ZERO;
    req.abi_version = RTB_ABI_VERSION;
    let mut words: Vec<u64> = Vec::new();
    match op {
        ResyncOp::TrackAll => req.op = RTB_RESYNC_TRACK_ALL,
        ResyncOp::Done => req.op = RTB_RESYNC_DONE,
        ResyncOp::Fetch { pending, stream } => {
            req.op = RTB_RESYNC_FETCH;
            if pending {
                req.flags |= RTB_RESYNC_F_PENDING;
            }
            if stream {
                req.flags |= RTB_RESYNC_F_STREAM;
            }
            words = vec![0; chunks.div_ceil(64) as usize];
            req.bitmap = words.as_mut_ptr() as u64;
            req.bitmap_bytes = (words.len() * 8) as u64;
        }
    }
    // SAFETY: `req` is a valid `RtbResync`; `bitmap` points to
    // `bitmap_bytes` writable bytes that live until the call returns.
    unsafe { ioctl::ring_resync(ring.as_raw_fd(), &mut req) }
        .map_err(|errno| Error::sys(format!("RTB_RING_IOC_RESYNC ({op:?})"), errno))?;
    let mut dirty = Vec::with_capacity(req.count as usize);
    for (i, w) in words.iter().enumerate() {
        let mut w = u64::from_le(*w);
        while w != 0 {
            let bit = u64::from(w.trailing_zeros());
            let chunk = i as u64 * 64 + bit;
            if chunk < req.chunks {
                dirty.push(chunk);
            }
            w &= w - 1;
        }
    }
    if matches!(op, ResyncOp::Fetch { .. }) && dirty.len() as u64 != req.count {
        return Err(Error::Inconsistent(format!(
            "RTB_RING_IOC_RESYNC returned {} chunks in its bitmap but said {}",
            dirty.len(),
            req.count
        )));
    }
    Ok(Resync {
        chunk_size: req.chunk_size,
        chunks: req.chunks,
        dirty,
        first_seq: req.first_seq,
        head: req.head,
    })
}

/// Parses `/dev/rtbackupN`, `rtbackupN` or `N`.
fn parse_index(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("/dev/").unwrap_or(name);
    let digits = rest.strip_prefix(RTB_DISK_PREFIX).unwrap_or(rest);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n < RTB_MAX_DEVICES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_index("/dev/rtbackup0"), Some(0));
        assert_eq!(parse_index("rtbackup12"), Some(12));
        assert_eq!(parse_index("7"), Some(7));
        assert_eq!(parse_index("/dev/sda"), None);
        assert_eq!(parse_index("rtbackup"), None);
        assert_eq!(parse_index("rtbackup-1"), None);
        assert_eq!(parse_index("99999999999999"), None);
        assert_eq!(parse_index("256"), None);
        assert_eq!(parse_index(""), None);
    }

    #[test]
    fn mark_requests_carry_the_name_and_nothing_else() {
        let req = mark_request(3, "before-upgrade").unwrap();
        assert_eq!(req.abi_version, RTB_ABI_VERSION);
        assert_eq!(req.index, 3);
        assert_eq!(req.name_len, 14);
        assert_eq!(&req.name[..14], b"before-upgrade");
        assert!(req.name[14..].iter().all(|&b| b == 0));
        assert_eq!((req.flags, req.seq, req.reserved), (0, 0, [0; 4]));
        let longest = "x".repeat(64);
        assert_eq!(mark_request(0, &longest).unwrap().name, [b'x'; 64]);
    }

    #[test]
    fn bad_mark_names_are_refused_before_the_kernel() {
        for (name, reason) in [
            ("", "empty"),
            (".snap", "starts with a dot"),
            ("vol@mark", "only A-Z"),
            ("a:b", "only A-Z"),
            ("été", "only A-Z"),
        ] {
            let e = mark_request(0, name).unwrap_err();
            assert!(matches!(e, Error::BadMarkName { .. }), "{name}: {e}");
            assert_eq!(e.errno(), Some(Errno::EINVAL));
            assert!(e.to_string().contains(reason), "{name}: {e}");
        }
        let e = mark_request(0, &"y".repeat(65)).unwrap_err();
        assert!(e.to_string().contains("longer than 64"), "{e}");
    }

    #[test]
    fn missing_control_device_says_modprobe() {
        let err = Control::open_path("/nonexistent/rtbackup-control").unwrap_err();
        assert!(matches!(err, Error::NotLoaded { .. }));
        assert!(err.to_string().contains("modprobe rtbackup"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_the_control_device_is_refused() {
        let err = Control::open_path("/dev/null").unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOTTY), "{err}");
    }
}
