// SPDX-License-Identifier: GPL-2.0

//! A bio-based gendisk stacked on a [`LowerDevice`].
//!
//! Every bio submitted to the disk is shown to [`DiskOps::submit_bio`], which
//! decides its fate: remap it to the lower device (the bio is cloned from a
//! private `bio_set` and the clone submitted below; when the clone completes,
//! [`DiskOps::end_bio`] sees the status and the original bio completes with
//! exactly that status) or complete it at once with a given status.
//!
//! C header: [`include/linux/blkdev.h`](srctree/include/linux/blkdev.h)

use super::{
    bdev::LowerDevice,
    bio::{BioRef, BioSet, BlkStatus},
    compat, glue, GFP_NOIO,
};
use core::{ffi::c_void, marker::PhantomData, ptr::NonNull};
use kernel::{
    alloc::flags::GFP_KERNEL,
    bindings,
    error::{from_err_ptr, to_result},
    ffi::{c_int, c_ulong},
    prelude::*,
    str::CStr,
    sync::Arc,
    types::{Opaque, ScopeGuard},
};

/// Reserved clones per disk: enough for forward progress under memory
/// pressure (the same order as device-mapper's `BIO_POOL_SIZE`).
const CLONE_POOL_SIZE: u32 = 256;

/// What to do with a submitted bio.
pub(crate) enum Action {
    /// Clone it to the lower device; complete it when the clone completes.
    /// `token` is handed back to [`DiskOps::end_bio`].
    Remap {
        /// Opaque to the disk.
        token: usize,
    },
    /// Complete it now with this status.
    Complete(BlkStatus),
}

/// The behaviour of a [`Disk`].
pub(crate) trait DiskOps: Send + Sync + Sized {
    /// The device that remapped bios go to.
    fn lower(&self) -> &LowerDevice;

    /// Called for every open of the disk, in process context, with the
    /// disk's `open_mutex` held.
    fn open(&self) -> Result;

    /// Decides what happens to `bio`. Called in the submitter's context; it
    /// may sleep, but allocations must not recurse into I/O (`GFP_NOIO`).
    fn submit_bio(&self, bio: &BioRef<'_>) -> Action;

    /// Called when the lower device has completed a remapped bio, before the
    /// original completes, with the token of its [`Action::Remap`]. Called
    /// in any context, including hard interrupt: it must not sleep or take
    /// sleeping locks.
    fn end_bio(&self, bio: &BioRef<'_>, status: BlkStatus, token: usize);
}

/// Per-clone context, in the `bio_set`'s front padding before each clone.
#[repr(C)]
struct CloneCtx {
    /// The original bio, completed when the clone completes.
    orig: *mut bindings::bio,
    /// `bio_start_io_acct` time of the original.
    start: c_ulong,
    /// The token of [`Action::Remap`].
    token: usize,
}

/// Front padding of the clone `bio_set`: one `CloneCtx`, which keeps the bio
/// behind it aligned to 8 bytes.
const CLONE_FRONT_PAD: usize = core::mem::size_of::<CloneCtx>();
const _: () = assert!(CLONE_FRONT_PAD % 8 == 0);

/// The context in front of `clone`.
///
/// # Safety
///
/// `clone` must have been allocated from a `DiskData::clones` bio_set.
unsafe fn clone_ctx(clone: *mut bindings::bio) -> *mut CloneCtx {
    // SAFETY: the bio_set's front padding of `CLONE_FRONT_PAD` bytes sits
    // right before every bio it allocates (caller's guarantee).
    unsafe { clone.cast::<u8>().sub(CLONE_FRONT_PAD).cast::<CloneCtx>() }
}

/// A count of clones at the lower device that teardown can wait for.
///
/// A C `atomic_t`: `atomic_dec_and_wake_up` is fully ordered in the kernel
/// memory model, which a Rust atomic RMW followed by `wake_up_var` is not on
/// every architecture.
///
/// # Invariants
///
/// `v` is an initialised `atomic_t` (zeroed is `ATOMIC_INIT(0)`).
struct InFlight {
    v: Opaque<bindings::atomic_t>,
}

impl InFlight {
    fn new() -> Self {
        // INVARIANT: a zeroed atomic_t is ATOMIC_INIT(0).
        Self {
            v: Opaque::new(bindings::atomic_t::default()),
        }
    }

    fn inc(&self) {
        // SAFETY: `v` is an initialised atomic_t (type invariant).
        unsafe { glue::rtb_atomic_inc(self.v.get()) };
    }

    /// Decrements; at zero, wakes `wait_zero`. Callable in any context.
    fn dec_and_wake_up(&self) {
        // SAFETY: as in `inc`. `wake_up_var` only hashes the address, so a
        // waiter may free `self` as soon as the count is zero.
        unsafe { glue::rtb_atomic_dec_and_wake_up(self.v.get()) };
    }

    fn read(&self) -> u32 {
        // SAFETY: as in `inc`.
        let n = unsafe { glue::rtb_atomic_read(self.v.get()) };
        n.max(0) as u32
    }

    /// Sleeps until the count is zero.
    fn wait_zero(&self) {
        // SAFETY: as in `inc`; process context (teardown).
        unsafe { glue::rtb_wait_atomic_zero(self.v.get()) };
    }
}

/// What the gendisk's `private_data` points to.
struct DiskData<T: DiskOps> {
    ops: Arc<T>,
    clones: BioSet,
    /// Clones submitted to the lower device and not yet completed.
    in_flight: InFlight,
}

impl<T: DiskOps> DiskData<T> {
    /// The data of the disk that `bio` was submitted to.
    ///
    /// # Safety
    ///
    /// `bio` must be a valid bio submitted to a disk created by
    /// [`Disk::<T>::new`] that has not been dropped yet.
    unsafe fn of_bio<'a>(bio: *mut bindings::bio) -> &'a Self {
        // SAFETY: by the caller's guarantee `bi_bdev` is our disk's whole
        // device, whose `private_data` was set to a live `DiskData<T>` in
        // `Disk::new` and is freed only in `Disk::drop`, after all bios.
        unsafe { &*((*(*(*bio).bi_bdev).bd_disk).private_data as *const Self) }
    }

    /// Sends `bio` to the lower device through a clone.
    ///
    /// # Safety
    ///
    /// `bio` must be valid, submitted to this data's disk and not completed.
    /// It is completed (now or later) by this call.
    unsafe fn remap(&self, bio: *mut bindings::bio, token: usize) {
        self.in_flight.inc();
        // SAFETY: `bio` is valid; the lower bdev is open while `self.ops`
        // lives; the bio_set is initialised. GFP_NOIO with direct reclaim
        // makes the mempool-backed allocation wait rather than fail.
        let clone = unsafe {
            bindings::bio_alloc_clone(
                self.ops.lower().as_raw_bdev(),
                bio,
                GFP_NOIO,
                self.clones.as_ptr(),
            )
        };
        if clone.is_null() {
            if let Some(nn) = NonNull::new(bio) {
                // SAFETY: the bio is completed only after this view is gone.
                self.ops.end_bio(
                    &unsafe { BioRef::from_raw(nn) },
                    BlkStatus::from_error(ENOMEM),
                    token,
                );
            }
            // SAFETY: `bio` is valid and ours to complete.
            unsafe {
                (*bio).bi_status = BlkStatus::from_error(ENOMEM).raw();
                bindings::bio_endio(bio);
            }
            self.in_flight.dec_and_wake_up();
            return;
        }
        // SAFETY: `clone` was allocated from `self.clones`, whose front
        // padding holds a `CloneCtx` right before it.
        unsafe {
            clone_ctx(clone).write(CloneCtx {
                orig: bio,
                start: bindings::bio_start_io_acct(bio),
                token,
            });
            (*clone).bi_end_io = Some(clone_end_io::<T>);
            bindings::submit_bio_noacct(clone);
        }
    }
}

/// `block_device_operations.submit_bio`.
///
/// # Safety
///
/// Called by the block layer with a valid bio for a disk of type `T`.
unsafe extern "C" fn submit_bio_callback<T: DiskOps>(bio: *mut bindings::bio) {
    // Split to the queue limits (the largest write must fit in the ring);
    // the remainder is resubmitted. Null when the bio was failed.
    // SAFETY: the block layer hands us a valid bio for our disk.
    let bio = unsafe { bindings::bio_split_to_limits(bio) };
    let Some(nn) = NonNull::new(bio) else {
        return;
    };
    // SAFETY: the block layer calls this only for bios submitted to our disk,
    // which is live while its queue is entered (del_gendisk drains it).
    let data = unsafe { DiskData::<T>::of_bio(bio) };
    // SAFETY: the bio is ours until we complete it, after this view is gone.
    let action = data.ops.submit_bio(&unsafe { BioRef::from_raw(nn) });
    match action {
        // SAFETY: `bio` is valid, submitted to this disk, not completed.
        Action::Remap { token } => unsafe { data.remap(bio, token) },
        // SAFETY: `bio` is valid and ours to complete.
        Action::Complete(status) => unsafe {
            (*bio).bi_status = status.raw();
            bindings::bio_endio(bio);
        },
    }
}

/// `bi_end_io` of a clone.
///
/// # Safety
///
/// Called by the block layer once per clone allocated in `DiskData::remap`.
unsafe extern "C" fn clone_end_io<T: DiskOps>(clone: *mut bindings::bio) {
    // SAFETY: the clone came from our bio_set, so its `CloneCtx` sits in the
    // front padding; the original is not completed until below.
    let (orig, start, token, status) = unsafe {
        let ctx = clone_ctx(clone).read();
        let status = (*clone).bi_status;
        bindings::bio_put(clone);
        (ctx.orig, ctx.start, ctx.token, BlkStatus::from_raw(status))
    };
    // SAFETY: the original was submitted to our disk; the disk data lives
    // until the in-flight count dropped below reaches zero.
    let data = unsafe { DiskData::<T>::of_bio(orig) };
    if let Some(nn) = NonNull::new(orig) {
        // SAFETY: the original is completed only after this view is gone.
        data.ops
            .end_bio(&unsafe { BioRef::from_raw(nn) }, status, token);
    }
    // SAFETY: the original is valid and ours to complete, exactly once.
    unsafe {
        if !status.is_ok() {
            (*orig).bi_status = status.raw();
        }
        bindings::bio_end_io_acct_remapped(orig, start, (*orig).bi_bdev);
        bindings::bio_endio(orig);
    }
    data.in_flight.dec_and_wake_up();
}

/// `block_device_operations.open`.
///
/// # Safety
///
/// Called by the block layer with a valid disk of type `T`.
unsafe extern "C" fn open_callback<T: DiskOps>(
    disk: *mut bindings::gendisk,
    _mode: bindings::blk_mode_t,
) -> c_int {
    // SAFETY: `private_data` of our disk is a live `DiskData<T>` (set before
    // `device_add_disk`, freed after `del_gendisk`, which excludes opens).
    let data = unsafe { &*((*disk).private_data as *const DiskData<T>) };
    match data.ops.open() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

struct OpsTable<T>(PhantomData<T>);

impl<T: DiskOps> OpsTable<T> {
    const OPS: bindings::block_device_operations = bindings::block_device_operations {
        submit_bio: Some(submit_bio_callback::<T>),
        open: Some(open_callback::<T>),
        owner: compat::this_module(),
        // SAFETY: all other members are optional callbacks or pointers, for
        // which zero means "not provided".
        ..unsafe { core::mem::zeroed() }
    };
}

/// A bio-based disk added to the system, e.g. `/dev/rtbackup0`.
///
/// # Invariants
///
/// - `gendisk` was allocated by `blk_alloc_disk` and added with
///   `device_add_disk`; its `fops` is `OpsTable::<T>::OPS` and its
///   `private_data` is `data`.
/// - `data` came from `KBox::into_raw` and is freed only in `drop`, after
///   `del_gendisk` and after every clone completed.
pub(crate) struct Disk<T: DiskOps> {
    gendisk: NonNull<bindings::gendisk>,
    data: NonNull<DiskData<T>>,
}

// SAFETY: the gendisk may be used and torn down from any thread; `T` is
// `Send + Sync`.
unsafe impl<T: DiskOps> Send for Disk<T> {}
// SAFETY: `&Disk` only reads counters and takes the disk's own mutex.
unsafe impl<T: DiskOps> Sync for Disk<T> {}

impl<T: DiskOps> Disk<T> {
    /// Creates and adds a disk called `name` over `ops.lower()`, with its
    /// capacity and queue limits, plus I/O accounting and stable writes.
    /// Bios larger than `max_io_bytes` are split. The disk always has a
    /// volatile write cache with FUA, so that flushes reach `ops` (they are
    /// consistency points); the lower device ignores them if it has none.
    pub(crate) fn new(ops: Arc<T>, name: &CStr, max_io_bytes: u32) -> Result<Self> {
        let name_bytes = compat::cstr_bytes_with_nul(name);
        let data = KBox::new(
            DiskData {
                ops,
                clones: BioSet::new(CLONE_POOL_SIZE, CLONE_FRONT_PAD as u32)?,
                in_flight: InFlight::new(),
            },
            GFP_KERNEL,
        )?;
        let lower = data.ops.lower();

        let mut lim = bindings::queue_limits::default();
        // SAFETY: `lim` is a valid queue_limits; the lower bdev is open.
        unsafe {
            bindings::blk_set_stacking_limits(&mut lim);
            bindings::queue_limits_stack_bdev(&mut lim, lower.as_raw_bdev(), 0, name.as_char_ptr());
            lim.features |= glue::rtb_blk_feat_io_stat()
                | glue::rtb_blk_feat_stable_writes()
                | glue::rtb_blk_feat_write_cache()
                | glue::rtb_blk_feat_fua();
        }
        let max_sectors = max_io_bytes >> 9;
        if max_sectors < (lim.logical_block_size >> 9).max(8) {
            return Err(EINVAL);
        }
        lim.max_hw_sectors = lim.max_hw_sectors.min(max_sectors);
        // Zoned devices need zone reporting and append emulation, which a
        // plain remap does not provide.
        // SAFETY: returns a constant.
        if lim.features & unsafe { glue::rtb_blk_feat_zoned() } != 0 {
            return Err(super::eopnotsupp());
        }
        // SAFETY: `lim` is valid and only read during the call.
        let gendisk = from_err_ptr(unsafe { glue::rtb_alloc_disk(&mut lim) })?;
        let gendisk = NonNull::new(gendisk).ok_or(ENOMEM)?;
        let nr_sectors = lower.nr_sectors();
        let data = NonNull::from(KBox::leak(data));

        let guard = ScopeGuard::new(|| {
            // SAFETY: the disk was allocated above and not added; `data` came
            // from `KBox::leak` above and nothing else refers to it.
            unsafe {
                bindings::put_disk(gendisk.as_ptr());
                drop(KBox::from_raw(data.as_ptr()));
            }
        });

        // SAFETY: the disk is not visible to anybody yet, so we may set it up.
        unsafe {
            let disk = gendisk.as_ptr();
            (*disk).fops = &OpsTable::<T>::OPS;
            (*disk).private_data = data.as_ptr().cast::<c_void>();
            let dst = &mut (*disk).disk_name;
            if name_bytes.len() > dst.len() {
                return Err(EINVAL);
            }
            for (d, s) in dst.iter_mut().zip(name_bytes) {
                *d = *s;
            }
            bindings::set_capacity(disk, nr_sectors);
        }
        // SAFETY: the disk is fully set up; from here on the block layer may
        // call our callbacks.
        to_result(unsafe {
            bindings::device_add_disk(
                core::ptr::null_mut(),
                gendisk.as_ptr(),
                core::ptr::null_mut(),
            )
        })?;
        guard.dismiss();
        // INVARIANT: allocated, set up and added above.
        Ok(Self { gendisk, data })
    }

    fn data(&self) -> &DiskData<T> {
        // SAFETY: `data` is live until `drop` (type invariant).
        unsafe { self.data.as_ref() }
    }

    /// Major and minor number of the disk.
    pub(crate) fn devt(&self) -> (u32, u32) {
        // SAFETY: the gendisk is valid (type invariant); the numbers are set
        // by `device_add_disk` and do not change.
        unsafe {
            let disk = self.gendisk.as_ptr();
            ((*disk).major as u32, (*disk).first_minor as u32)
        }
    }

    /// Current openers of the disk (a mount is one).
    pub(crate) fn openers(&self) -> u32 {
        // SAFETY: the gendisk and its whole-disk bdev are valid (type
        // invariant); `bd_openers` is an atomic_t, read once.
        let n = unsafe {
            core::ptr::read_volatile(&(*(*self.gendisk.as_ptr()).part0).bd_openers.counter)
        };
        n.max(0) as u32
    }

    /// Clones submitted to the lower device and not yet completed.
    pub(crate) fn in_flight(&self) -> u32 {
        self.data().in_flight.read()
    }

    /// Runs `f` with the number of openers while holding the disk's
    /// `open_mutex`, so no open can start or finish meanwhile (our `open`
    /// callback runs under that mutex).
    pub(crate) fn with_open_lock<R>(&self, f: impl FnOnce(u32) -> R) -> R {
        // SAFETY: the gendisk is valid (type invariant) and its open_mutex
        // initialised by `blk_alloc_disk`.
        let mutex = unsafe { &raw mut (*self.gendisk.as_ptr()).open_mutex };
        // SAFETY: `mutex` is valid; we are in process context.
        unsafe { bindings::mutex_lock(mutex) };
        let guard = ScopeGuard::new(|| {
            // SAFETY: locked above by this thread.
            unsafe { bindings::mutex_unlock(mutex) };
        });
        let r = f(self.openers());
        drop(guard);
        r
    }
}

impl<T: DiskOps> Drop for Disk<T> {
    fn drop(&mut self) {
        let disk = self.gendisk.as_ptr();
        // SAFETY: the disk was added (type invariant). `del_gendisk` removes
        // it and drains its queue: when it returns, no `submit_bio` or `open`
        // callback runs or will run. Clones already submitted below are not
        // covered by that drain, so wait for them before freeing their
        // bio_set and the data they point to; then drop the last reference.
        unsafe {
            bindings::del_gendisk(disk);
            self.data().in_flight.wait_zero();
            bindings::put_disk(disk);
            drop(KBox::from_raw(self.data.as_ptr()));
        }
    }
}
