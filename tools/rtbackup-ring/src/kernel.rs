//! The kernel's ring of one `/dev/rtbackupN`.

use crate::error::{Result, RingError};
use crate::source::{RingSource, Wakeup};
use crate::view::{Cursor, RingGeometry, RingView};
use memmap2::{Mmap, MmapOptions};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtbackup_abi::{RTB_RING_MAX_SIZE, RTB_RING_MIN_SIZE, RTB_RING_PAGE};
use rtbackup_control::{Control, DeviceStatus, DirectReader, Resync, ResyncOp, RingAck};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

/// The write-journal ring of one device, mapped read-only: the agent's
/// handle (the kernel lets one be open per device).
pub struct Ring {
    view: RingView<Mmap>,
    fd: OwnedFd,
    device: DeviceStatus,
    /// What resync reads open: see [`read_path`].
    read_path: String,
    /// The bounce buffer of the resync's `O_DIRECT` reads, kept between
    /// them (the device is opened per read: see [`read_path`]).
    bounce: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("view", &self.view)
            .field("fd", &self.fd)
            .field("device", &self.device)
            .field("read_path", &self.read_path)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Opens the ring of `device` (`/dev/rtbackupN`, `rtbackupN`, `N` or
    /// the lower device) through `/dev/rtbackup-control`.
    pub fn open(device: &str) -> Result<Self> {
        let control = Control::open()?;
        Self::open_with(&control, device)
    }

    /// Like [`Ring::open`], with an open control device.
    pub fn open_with(control: &Control, device: &str) -> Result<Self> {
        let status = control.resolve(device)?;
        let fd = control.ring_open(status.index)?;
        let map = |bytes: u64| -> Result<Mmap> {
            let len = usize::try_from(bytes).map_err(|_| RingError::Map {
                device: status.device.clone(),
                bytes,
                source: std::io::Error::other("larger than the address space"),
            })?;
            // SAFETY: a read-only shared mapping of the ring; the kernel
            // keeps its pages for as long as the mapping exists, and
            // `RingView` reads it only as the ABI allows (atomic loads of
            // the control page; published records).
            unsafe { MmapOptions::new().len(len).map(&fd) }.map_err(|source| RingError::Map {
                device: status.device.clone(),
                bytes,
                source,
            })
        };
        let page = map(RTB_RING_PAGE)?;
        let geometry = RingGeometry::read(&page)?;
        if !(RTB_RING_MIN_SIZE..=RTB_RING_MAX_SIZE).contains(&geometry.data_size) {
            return Err(RingError::BadControlPage {
                reason: format!(
                    "data size {} is outside the ABI's {RTB_RING_MIN_SIZE} to {RTB_RING_MAX_SIZE}",
                    geometry.data_size
                ),
            });
        }
        drop(page);
        let view = RingView::new(map(geometry.mapping_len())?)?;
        if view.ring_id() != geometry.ring_id {
            return Err(RingError::BadControlPage {
                reason: "the ring changed while it was being mapped".into(),
            });
        }
        tracing::debug!(
            device = %status.device,
            ring_id = view.ring_id(),
            data_size = view.data_size(),
            head = view.head(),
            tail = view.tail(),
            "ring mapped"
        );
        let read_path = read_path(&status);
        tracing::debug!(device = %status.device, read_path, "resync reads");
        Ok(Self {
            view,
            fd,
            device: status,
            read_path,
            bounce: Mutex::new(Vec::new()),
        })
    }

    /// The device, as resolved when the ring was opened.
    pub fn device(&self) -> &DeviceStatus {
        &self.device
    }

    /// The ring file descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// The node resync and verify reads open: the lower device itself when its
/// node is still that device (`lower_devt`), else `/dev/rtbackupN`. Both
/// hold the same bytes (the stacked disk passes reads down unchanged, and a
/// resync fetch waits for the writes in flight), but opening the lower
/// device does not make the stacked disk busy, so `rtbackupctl detach`
/// during a resync is not refused (`EBUSY`) because of the agent's reads.
fn read_path(status: &DeviceStatus) -> String {
    use nix::sys::stat::{major, minor};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::metadata(&status.lower) {
        Ok(m)
            if m.file_type().is_block_device()
                && format!("{}:{}", major(m.rdev()), minor(m.rdev())) == status.lower_devt =>
        {
            status.lower.clone()
        }
        _ => status.device.clone(),
    }
}

impl std::ops::Deref for Ring {
    type Target = RingView<Mmap>;

    fn deref(&self) -> &Self::Target {
        &self.view
    }
}

impl RingSource for Ring {
    type Memory = Mmap;

    fn view(&self) -> &RingView<Mmap> {
        &self.view
    }

    unsafe fn set_tail(&self, position: u64, connected: bool) -> Result<()> {
        let ack = RingAck {
            tail: position,
            acked_seq: 0,
            connected,
            spooled: false,
        };
        rtbackup_control::ring_ack(self.fd.as_fd(), &ack)?;
        Ok(())
    }

    unsafe fn set_tail_at(&self, cursor: Cursor, connected: bool) -> Result<()> {
        let ack = RingAck {
            tail: cursor.pos,
            acked_seq: cursor.seq.saturating_sub(1),
            connected,
            spooled: false,
        };
        rtbackup_control::ring_ack(self.fd.as_fd(), &ack)?;
        Ok(())
    }

    unsafe fn set_tail_spooled(
        &self,
        cursor: Cursor,
        durable_seq: u64,
        connected: bool,
    ) -> Result<()> {
        let ack = RingAck {
            tail: cursor.pos,
            acked_seq: durable_seq,
            connected,
            spooled: true,
        };
        rtbackup_control::ring_ack(self.fd.as_fd(), &ack)?;
        Ok(())
    }

    fn resync(&self, op: ResyncOp) -> Result<Resync> {
        let chunk = self.device.ring.chunk_size.max(1);
        let chunks = self.device.size_bytes.div_ceil(chunk);
        Ok(rtbackup_control::ring_resync(self.fd.as_fd(), op, chunks)?)
    }

    fn chunk_size(&self) -> Result<u64> {
        Ok(self.device.ring.chunk_size)
    }

    fn mark_dirty(&self, chunks: &[u64]) -> Result<()> {
        let chunk = self.device.ring.chunk_size.max(1);
        let count = self.device.size_bytes.div_ceil(chunk);
        Control::open()?.dirty(self.device.index, count, chunks)?;
        Ok(())
    }

    /// The stacked disk's I/O statistics (`/sys/dev/block/MAJ:MIN/stat`,
    /// Documentation/block/stat.rst): the seventh field counts the
    /// sectors written. The module accounts the disk's I/O, and resync
    /// reads go to the lower device, so only the applications' writes
    /// count here.
    fn written_sectors(&self) -> Option<u64> {
        let path = format!("/sys/dev/block/{}/stat", self.device.devt);
        let stat = std::fs::read_to_string(path).ok()?;
        stat.split_whitespace().nth(6)?.parse().ok()
    }

    /// Opens `/dev/rtbackupN` with `O_DIRECT` for each call (holding it
    /// open would make a detach fail with EBUSY), so callers read runs of
    /// chunks, not single blocks.
    fn read_device(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = &self.read_path;
        let len = buf.len();
        let err = |source| RingError::DeviceRead {
            device: path.clone(),
            offset,
            len,
            source,
        };
        let r = DirectReader::open(path).map_err(err)?;
        let mut bounce = self.bounce.lock().unwrap_or_else(|p| p.into_inner());
        let mut r = r.with_buffer(std::mem::take(&mut *bounce));
        let read = r.read_at(buf, offset);
        *bounce = r.into_buffer();
        read.map_err(err)
    }

    fn wait(&self, timeout: Duration) -> Result<Wakeup> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => Ok(Wakeup::Timeout),
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                    return Err(RingError::Hangup {
                        revents: revents.bits(),
                    });
                }
                // Detached: the mapping stays valid until the fd is
                // closed, so what is left can still be sent and
                // acknowledged.
                if revents.contains(PollFlags::POLLHUP) || self.view.is_detached() {
                    return Ok(Wakeup::Detached);
                }
                Ok(if revents.contains(PollFlags::POLLIN) {
                    Wakeup::Ready
                } else {
                    Wakeup::Timeout
                })
            }
            Err(Errno::EINTR) => Ok(Wakeup::Timeout),
            Err(e) => Err(RingError::Poll(e)),
        }
    }
}
