// SPDX-License-Identifier: GPL-2.0

//! The control interface: the table of attached devices and the ioctls of
//! `/dev/rtbackup-control` that change and describe it, open a device's
//! ring, and put marks in its record stream.
//!
//! Every request is validated completely before anything changes: ABI
//! version (`EPROTO`), flags and reserved fields (`EINVAL`), NUL-terminated
//! strings and mark names (`EINVAL`), sizes (`EINVAL`), user addresses
//! (`EFAULT`). A request that fails leaves the table as it was.

use crate::device::Device;
use crate::onfull::FullPolicy;
use crate::ring::Ring;
use crate::sys::{self, bdev::LowerDevice, disk::Disk, ringfile, ModuleRef};
use crate::uapi::{
    self, RtbAttach, RtbDetach, RtbDeviceInfo, RtbDirty, RtbList, RtbMark, RtbRingOpen, RtbSet,
    RtbVersion,
};
use core::mem::size_of;
use kernel::{
    alloc::{flags::GFP_KERNEL, KVVec, KVec},
    prelude::*,
    str::{CStr, CString},
    sync::{Arc, Mutex},
    uaccess::{UserPtr, UserSlice},
};

/// An attached device. Field order is teardown order: the disk goes first
/// (no more I/O), then the device (releases the lower device), then the
/// module reference.
struct Attached {
    disk: Disk<Device>,
    device: Arc<Device>,
    _module: ModuleRef,
}

impl Attached {
    fn info(&self) -> RtbDeviceInfo {
        let dev = &self.device;
        let (disk_major, disk_minor) = self.disk.devt();
        let lower = dev.lower_device();
        let (lower_major, lower_minor) = lower.devt();
        let (logical, physical) = lower.block_sizes();
        let mut state = uapi::RTB_STATE_ATTACHED;
        if dev.is_detaching() {
            state |= uapi::RTB_STATE_DETACHING;
        }
        let mut info = RtbDeviceInfo::ZERO;
        info.index = dev.index();
        info.state = state;
        info.disk_major = disk_major;
        info.disk_minor = disk_minor;
        info.lower_major = lower_major;
        info.lower_minor = lower_minor;
        info.open_count = self.disk.openers();
        info.logical_block_size = logical;
        info.physical_block_size = physical;
        info.capacity_sectors = lower.nr_sectors();
        copy_c_string(
            &mut info.disk_name,
            uapi::RTB_DISK_PREFIX.as_bytes(),
            Some(dev.index()),
        );
        copy_c_string(&mut info.lower_path, dev.lower_path(), None);
        info.stats = dev.stats(self.disk.in_flight());
        info.ring = dev.ring().info();
        info
    }
}

/// Writes `prefix` (and the decimal `number`) into `dst`, NUL-terminated,
/// truncating if needed.
fn copy_c_string(dst: &mut [u8], prefix: &[u8], number: Option<u32>) {
    let mut digits = [0u8; 10];
    let mut nd = 0;
    if let Some(mut n) = number {
        loop {
            digits[nd] = b'0' + (n % 10) as u8;
            nd += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
    }
    let src = Iterator::chain(prefix.iter().copied(), digits[..nd].iter().rev().copied());
    let room = dst.len().saturating_sub(1);
    let mut len = 0;
    for (d, s) in dst.iter_mut().take(room).zip(src) {
        *d = s;
        len += 1;
    }
    if let Some(nul) = dst.get_mut(len) {
        *nul = 0;
    }
}

fn check_version(v: u32) -> Result {
    if v != uapi::RTB_ABI_VERSION {
        return Err(sys::eproto());
    }
    Ok(())
}

fn require_admin() -> Result {
    if !sys::capable_sys_admin() {
        return Err(EPERM);
    }
    Ok(())
}

/// A slot of the device table.
enum Slot {
    /// Free for an attach.
    Free,
    /// Held, without the table's lock, by an attach that builds its device
    /// or a detach that tears one down (`del_gendisk` may wait on a slow
    /// lower device): no other request may use it, and its index (the
    /// disk's name) is not reused before the old disk is gone.
    Busy,
    /// An attached device.
    Attached(Attached),
}

impl Slot {
    fn attached(&self) -> Option<&Attached> {
        match self {
            Slot::Attached(attached) => Some(attached),
            _ => None,
        }
    }

    /// The attached device, the slot left busy; `None` (the slot as it
    /// was) if none is attached.
    fn take_attached(&mut self) -> Option<Attached> {
        match core::mem::replace(self, Slot::Busy) {
            Slot::Attached(attached) => Some(attached),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// The control state: a slot per possible device index. The lock is held
/// only to look slots up and change them, never while a disk is added or
/// deleted.
#[pin_data]
pub(crate) struct Control {
    #[pin]
    slots: Mutex<KVec<Slot>>,
}

impl Control {
    /// Empty control state.
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let max = uapi::RTB_MAX_DEVICES as usize;
        let mut slots = KVec::with_capacity(max, GFP_KERNEL)?;
        for _ in 0..max {
            slots.push(Slot::Free, GFP_KERNEL)?;
        }
        Ok(pin_init!(Self {
            slots <- kernel::new_mutex!(slots, "rtbackup_slots"),
        }))
    }

    /// Handles one ioctl of `/dev/rtbackup-control`.
    pub(crate) fn ioctl(&self, cmd: u32, arg: UserPtr) -> Result<isize> {
        match cmd {
            uapi::RTB_IOC_VERSION => self.ioctl_version(arg),
            uapi::RTB_IOC_ATTACH => self.ioctl_attach(arg),
            uapi::RTB_IOC_DETACH => self.ioctl_detach(arg),
            uapi::RTB_IOC_LIST => self.ioctl_list(arg),
            uapi::RTB_IOC_RING_OPEN => return self.ioctl_ring_open(arg),
            uapi::RTB_IOC_MARK => self.ioctl_mark(arg),
            uapi::RTB_IOC_DIRTY => self.ioctl_dirty(arg),
            uapi::RTB_IOC_SET => self.ioctl_set(arg),
            _ => Err(ENOTTY),
        }
        .map(|()| 0)
    }

    /// The ring of device `index`; `ENXIO` unless it is attached and not
    /// being detached. The table's lock is not held afterwards, so the
    /// caller may sleep on the ring.
    fn ring_of(&self, index: u32) -> Result<Arc<Ring>> {
        let slots = self.slots.lock();
        let attached = slots
            .get(index as usize)
            .and_then(Slot::attached)
            .ok_or(ENXIO)?;
        if attached.device.is_detaching() {
            return Err(ENXIO);
        }
        Ok(attached.device.ring().clone())
    }

    fn ioctl_ring_open(&self, arg: UserPtr) -> Result<isize> {
        require_admin()?;
        let req: RtbRingOpen = UserSlice::new(arg, size_of::<RtbRingOpen>())
            .reader()
            .read()?;
        check_version(req.abi_version)?;
        if req.flags != 0 || req.pad != 0 || req.reserved.iter().any(|&r| r != 0) {
            return Err(EINVAL);
        }
        let ring = self.ring_of(req.index)?;
        ring.claim_agent()?;
        match ringfile::open_fd(ring.clone()) {
            Ok(fd) => Ok(fd as isize),
            Err(e) => {
                ring.release_agent();
                Err(e)
            }
        }
    }

    /// Puts a mark in the record stream of a device and answers its `seq`.
    /// Waits, as writers do, while the ring is full.
    fn ioctl_mark(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let (mut reader, mut probe) = UserSlice::new(arg, size_of::<RtbMark>()).reader_writer();
        let mut req: RtbMark = reader.read()?;
        check_version(req.abi_version)?;
        if req.flags != 0 || req.seq != 0 || req.reserved.iter().any(|&r| r != 0) {
            return Err(EINVAL);
        }
        let name = req.name_bytes().ok_or(EINVAL)?;
        uapi::check_mark_name(name).map_err(|_| EINVAL)?;
        let ring = self.ring_of(req.index)?;
        // Fault before the mark exists, not after, if the answer cannot be
        // written (the buffer can still be unmapped in between: then the
        // mark stays in the stream, which is harmless).
        probe.write(&req)?;
        req.seq = ring.record_mark(name)?;
        UserSlice::new(arg, size_of::<RtbMark>())
            .writer()
            .write(&req)
    }

    /// Marks chunks of a device dirty (a verify's repair) and starts
    /// tracking; its agent resyncs them.
    fn ioctl_dirty(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let (mut reader, mut writer) = UserSlice::new(arg, size_of::<RtbDirty>()).reader_writer();
        let mut req: RtbDirty = reader.read()?;
        check_version(req.abi_version)?;
        let outputs = [req.count, req.chunks, req.chunk_size];
        if req.flags != 0
            || req.pad != 0
            || outputs.iter().any(|&v| v != 0)
            || req.reserved.iter().any(|&r| r != 0)
        {
            return Err(EINVAL);
        }
        let ring = self.ring_of(req.index)?;
        let geometry = ring.bitmap_geometry();
        let len = geometry.abi_bytes;
        if req.bitmap_bytes != len as u64 {
            return Err(EINVAL);
        }
        let mut bitmap = KVVec::from_elem(0u8, len, GFP_KERNEL)?;
        UserSlice::new(sys::user_ptr(req.bitmap), len)
            .reader()
            .read_slice(&mut bitmap)?;
        // Fault before anything changes if the answer cannot be written.
        writer.write(&req)?;
        req.count = ring.mark_dirty(&bitmap)?;
        req.chunks = geometry.chunks;
        req.chunk_size = geometry.chunk_size;
        UserSlice::new(arg, size_of::<RtbDirty>())
            .writer()
            .write(&req)
    }

    /// Changes what a device's full ring does.
    fn ioctl_set(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let req: RtbSet = UserSlice::new(arg, size_of::<RtbSet>()).reader().read()?;
        check_version(req.abi_version)?;
        let known = uapi::RTB_SET_ON_FULL | uapi::RTB_SET_BLOCK_TIMEOUT;
        if req.flags == 0
            || req.flags & !known != 0
            || req.pad != 0
            || req.reserved.iter().any(|&r| r != 0)
        {
            return Err(EINVAL);
        }
        let track = match (req.flags & uapi::RTB_SET_ON_FULL != 0, req.on_full) {
            (false, 0) => None,
            (true, uapi::RTB_ON_FULL_BLOCK) => Some(false),
            (true, uapi::RTB_ON_FULL_TRACK) => Some(true),
            _ => return Err(EINVAL),
        };
        let timeout = match (
            req.flags & uapi::RTB_SET_BLOCK_TIMEOUT != 0,
            req.block_timeout_ms,
        ) {
            (false, 0) => None,
            (true, ms) if ms <= uapi::RTB_BLOCK_TIMEOUT_MAX_MS => Some(ms),
            _ => return Err(EINVAL),
        };
        let ring = self.ring_of(req.index)?;
        ring.set_full_policy(track, timeout);
        let (on_full, ms) = ring.info_policy();
        log_full_policy(req.index, on_full, ms);
        Ok(())
    }

    fn ioctl_version(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let mut v = RtbVersion::ZERO;
        v.abi_version = uapi::RTB_ABI_VERSION;
        copy_c_string(&mut v.release, uapi::RTB_RELEASE.as_bytes(), None);
        UserSlice::new(arg, size_of::<RtbVersion>())
            .writer()
            .write(&v)
    }

    fn ioctl_attach(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let (mut reader, mut writer) = UserSlice::new(arg, size_of::<RtbAttach>()).reader_writer();
        let mut req: RtbAttach = reader.read()?;
        check_version(req.abi_version)?;
        if req.flags & !uapi::RTB_ATTACH_TRACK != 0
            || req.index != 0
            || req.block_timeout_ms > uapi::RTB_BLOCK_TIMEOUT_MAX_MS
            || req.reserved.iter().any(|&r| r != 0)
        {
            return Err(EINVAL);
        }
        let chunk_size = match req.chunk_size {
            0 => uapi::RTB_CHUNK_DEFAULT,
            n if n.is_power_of_two()
                && (uapi::RTB_CHUNK_MIN..=uapi::RTB_CHUNK_MAX).contains(&n) =>
            {
                n
            }
            _ => return Err(EINVAL),
        };
        let opts = AttachOptions {
            ring_size: 0,
            chunk_size,
            track_on_full: req.flags & uapi::RTB_ATTACH_TRACK != 0,
            block_timeout_ms: req.block_timeout_ms,
        };
        let opts = AttachOptions {
            ring_size: match req.ring_size {
                0 => uapi::RTB_RING_DEFAULT_SIZE,
                n if n.is_power_of_two()
                    && (uapi::RTB_RING_MIN_SIZE..=uapi::RTB_RING_MAX_SIZE).contains(&n) =>
                {
                    n
                }
                _ => return Err(EINVAL),
            },
            ..opts
        };
        let path = uapi::c_str_bytes(&req.lower_path).ok_or(EINVAL)?;
        if path.is_empty() {
            return Err(EINVAL);
        }
        let cpath =
            CStr::from_bytes_with_nul(&req.lower_path[..=path.len()]).map_err(|_| EINVAL)?;

        let mut slots = self.slots.lock();
        let index = slots
            .iter()
            .position(|s| matches!(s, Slot::Free))
            .ok_or(ENOSPC)?;
        slots[index] = Slot::Busy;
        drop(slots);
        // Answer before the disk exists: a fault here changes nothing.
        req.index = index as u32;
        let made = writer
            .write(&req)
            .and_then(|()| attach(index as u32, cpath, &opts));
        let mut slots = self.slots.lock();
        match made {
            Ok(attached) => slots[index] = Slot::Attached(attached),
            Err(e) => {
                slots[index] = Slot::Free;
                return Err(e);
            }
        }
        drop(slots);
        pr_info!(
            "{}{}: attached to {}, ring of {} KiB, chunks of {} KiB\n",
            uapi::RTB_DISK_PREFIX,
            index,
            cpath,
            opts.ring_size >> 10,
            opts.chunk_size >> 10
        );
        let on_full = if opts.track_on_full {
            uapi::RTB_ON_FULL_TRACK
        } else {
            uapi::RTB_ON_FULL_BLOCK
        };
        log_full_policy(index as u32, on_full, opts.block_timeout_ms);
        Ok(())
    }

    fn ioctl_detach(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let req: RtbDetach = UserSlice::new(arg, size_of::<RtbDetach>())
            .reader()
            .read()?;
        check_version(req.abi_version)?;
        if req.flags != 0 || req.pad != 0 || req.reserved.iter().any(|&r| r != 0) {
            return Err(EINVAL);
        }
        let index = req.index as usize;
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(index).ok_or(ENXIO)?;
        let attached = slot.attached().ok_or(ENXIO)?;
        attached.disk.with_open_lock(|openers| {
            if openers > 0 {
                return Err(EBUSY);
            }
            attached.device.begin_detach();
            Ok(())
        })?;
        let attached = slot.take_attached().ok_or(ENXIO)?;
        drop(slots);
        // Tear down without the lock (other devices' requests go on), the
        // slot busy until the old disk is gone.
        drop(attached);
        self.slots.lock()[index] = Slot::Free;
        pr_info!("{}{}: detached\n", uapi::RTB_DISK_PREFIX, req.index);
        Ok(())
    }

    fn ioctl_list(&self, arg: UserPtr) -> Result {
        require_admin()?;
        let (mut reader, mut writer) = UserSlice::new(arg, size_of::<RtbList>()).reader_writer();
        let mut req: RtbList = reader.read()?;
        check_version(req.abi_version)?;
        if req.flags != 0 || req.count != 0 || req.reserved.iter().any(|&r| r != 0) {
            return Err(EINVAL);
        }
        if req.capacity > uapi::RTB_MAX_DEVICES {
            return Err(EINVAL);
        }
        let capacity = req.capacity as usize;
        let mut out = UserSlice::new(
            sys::user_ptr(req.devices),
            capacity * size_of::<RtbDeviceInfo>(),
        )
        .writer();
        let slots = self.slots.lock();
        let mut count = 0u32;
        for attached in slots.iter().filter_map(Slot::attached) {
            if (count as usize) < capacity {
                out.write(&attached.info())?;
            }
            count += 1;
        }
        drop(slots);
        req.count = count;
        writer.write(&req)
    }
}

/// Validated options of an attach.
struct AttachOptions {
    ring_size: u64,
    chunk_size: u64,
    track_on_full: bool,
    block_timeout_ms: u32,
}

/// Logs what the full ring of `/dev/rtbackup<index>` does: `on_full`
/// (`RTB_ON_FULL_*`) and the block timeout `ms`.
fn log_full_policy(index: u32, on_full: u32, ms: u32) {
    let prefix = uapi::RTB_DISK_PREFIX;
    match (on_full, ms) {
        (uapi::RTB_ON_FULL_TRACK, _) => pr_info!("{prefix}{index}: when full: track\n"),
        (_, 0) => pr_info!("{prefix}{index}: when full: block, as long as it takes\n"),
        (_, ms) => pr_info!("{prefix}{index}: when full: block, then track after {ms} ms\n"),
    }
}

/// Opens `path` and stacks `/dev/rtbackup<index>` on it, with a ring and
/// dirty bitmaps as `opts` say.
fn attach(index: u32, path: &CStr, opts: &AttachOptions) -> Result<Attached> {
    let lower = LowerDevice::open(path)?;
    if lower.is_this_module() {
        return Err(EINVAL);
    }
    let mut lower_path = KVec::with_capacity(sys::cstr_bytes(path).len(), GFP_KERNEL)?;
    lower_path.extend_from_slice(sys::cstr_bytes(path), GFP_KERNEL)?;
    let (logical, _) = lower.block_sizes();
    if opts.chunk_size < u64::from(logical) {
        return Err(EINVAL);
    }
    let ring = Ring::new(
        index,
        opts.ring_size,
        lower.nr_sectors(),
        logical,
        opts.chunk_size,
        FullPolicy::new(opts.track_on_full, opts.block_timeout_ms),
    )?;
    let max_io = ring.max_payload();
    let device = Arc::new(Device::new(index, lower, lower_path, ring), GFP_KERNEL)?;
    let name = CString::try_from_fmt(format_args!("{}{}", uapi::RTB_DISK_PREFIX, index))?;
    let disk = Disk::new(device.clone(), &name, max_io)?;
    Ok(Attached {
        disk,
        device,
        _module: ModuleRef::get(),
    })
}
