//! A seeded random fuzzer of rtbackup's ioctls (issue 6, "Security").
//!
//! Sends random requests to /dev/rtbackup-control and to the ring files it
//! manages to open: every ioctl number of rtbackup in every direction and
//! size, their neighbours, random numbers of type 0xBB; arguments that are
//! random bytes or a valid structure with fields mutated (versions, flags,
//! padding, reserved and output fields, indexes, sizes, paths unterminated,
//! long or naming files that are not block devices, mark names, bitmap
//! addresses and sizes); NULL, unmapped, kernel, non-canonical, read-only
//! and half-mapped addresses; and mmap, mprotect, mremap, madvise, poll,
//! read, write, dup and close of ring files. With `--disk` it attaches
//! those scratch disks with random options (and detaches, opens the stacked
//! disk, marks, dirties, resyncs and acknowledges).
//!
//! Every call is checked against the documented rules that hold whatever
//! the arguments (unknown numbers `ENOTTY`, bad addresses `EFAULT`, other ABI
//! versions `EPROTO`, no answer into read-only memory, `EPERM` without
//! `CAP_SYS_ADMIN`, ring open `EBUSY` exactly while a ring file or mapping
//! of the device is alive, no
//! writable or executable ring mapping, `POLLHUP` exactly once detached) and
//! against the device table: a refused request changes nothing, an attach
//! adds one device, a detach removes the one named. At the end it detaches
//! everything it attached and checks that the table, the `/dev/rtbackupN`
//! nodes and the module's reference count are as before.
//!
//! Unprivileged (without `CAP_SYS_ADMIN`, or with `--expect-unprivileged`):
//! opening the control device must fail with `EACCES` (for a user other
//! than root) and every control ioctl (all of them need the capability,
//! even VERSION and LIST) with `EPERM`; it fuzzes the control file
//! descriptor it inherits (`--control-fd N`), if any. It cannot list the
//! devices then: that nothing changed is for the caller to check as root
//! (tests/cases/15-ioctl-fuzz.sh compares the table before and after).
//!
//! The fuzzer cannot crash itself: every address it hands the kernel is in
//! a scratch mapping of its own (or cannot be written at all), and it reads
//! ring mappings only while they are mapped readable.
//!
//! Usage: rtb-ioctl-fuzz [--seed N] [--calls N] [--disk DEV]...
//! [--max-attaches N] [--control PATH] [--control-fd N]
//! [--expect-unprivileged] [--verbose]. Exit status 0 when every check
//! held, 1 otherwise, 2 on a usage error.

use rtbackup_abi::*;
use rtbackup_testkit::{errno, ioc_type, ioctl_ret, list, list_into};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_void, CString};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
/// The scratch area: guard | arguments | guard | buffers | guard | read-only
/// | guard. Guards are `PROT_NONE`; everything the kernel may write to is in
/// the arguments or buffers part.
const ARGS_OFF: usize = PAGE;
const ARGS_LEN: usize = 256 << 10;
const BUFS_OFF: usize = ARGS_OFF + ARGS_LEN + PAGE;
const BUFS_LEN: usize = 768 << 10;
const RO_OFF: usize = BUFS_OFF + BUFS_LEN + PAGE;
const RO_LEN: usize = 16 << 10;
const TOTAL: usize = RO_OFF + RO_LEN + PAGE;
const GUARDS: [usize; 4] = [0, ARGS_OFF + ARGS_LEN, BUFS_OFF + BUFS_LEN, RO_OFF + RO_LEN];

/// Ring sizes a valid attach asks for: small, so that the guest's memory
/// is not the limit (0 is the default 64 MiB).
const RING_SIZES: [u64; 5] = [1 << 20, 1 << 20, 2 << 20, 4 << 20, 0];
/// The largest ring a request may ask for: a valid larger size is cut to
/// 1 MiB before the call.
const RING_SIZE_CAP: u64 = 64 << 20;

/// The ABI's structures: `#[repr(C)]`, only integers and byte arrays, with
/// explicit padding.
///
/// # Safety
///
/// Only for such types: every byte of a value is initialized and any bytes
/// are a valid value.
unsafe trait Plain: Copy {
    fn to_bytes(&self) -> Vec<u8> {
        // SAFETY: all bytes of a `Plain` value are initialized (the trait's
        // contract).
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(self).cast::<u8>(), size_of::<Self>())
        }
        .to_vec()
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: `b` holds enough bytes, and any bytes are a valid `Self`
        // (the trait's contract).
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Self>()) })
    }

    /// Changes `bytes`, if they hold a `Self`, through `f`.
    fn edit(bytes: &mut Vec<u8>, f: impl FnOnce(&mut Self)) {
        if let Some(mut v) = Self::from_bytes(bytes) {
            f(&mut v);
            *bytes = v.to_bytes();
        }
    }
}

// SAFETY: a #[repr(C)] structure of rust/uapi.rs: integers, byte arrays and
// explicit padding.
unsafe impl Plain for RtbVersion {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbAttach {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbDetach {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbList {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbRingOpen {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbMark {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbDirty {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbSet {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbRingAck {}
// SAFETY: as for RtbVersion.
unsafe impl Plain for RtbResync {}

// `gen_index_req` makes both: the same fields at the same offsets.
const _: () = {
    assert!(size_of::<RtbDetach>() == size_of::<RtbRingOpen>());
    assert!(std::mem::offset_of!(RtbDetach, index) == std::mem::offset_of!(RtbRingOpen, index));
    assert!(std::mem::offset_of!(RtbDetach, pad) == std::mem::offset_of!(RtbRingOpen, pad));
    assert!(
        std::mem::offset_of!(RtbDetach, reserved) == std::mem::offset_of!(RtbRingOpen, reserved)
    );
};

/// splitmix64: reproducible from the seed, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// One of `xs`, or (as often as each) a random value.
    fn u32_of(&mut self, xs: &[u32]) -> u32 {
        let i = self.below(xs.len() as u64 + 1) as usize;
        xs.get(i).copied().unwrap_or_else(|| self.next() as u32)
    }

    /// One of `xs`, or (as often as each) a random value.
    fn u64_of(&mut self, xs: &[u64]) -> u64 {
        let i = self.below(xs.len() as u64 + 1) as usize;
        xs.get(i).copied().unwrap_or_else(|| self.next())
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A value that is not zero, often at a boundary.
    fn nonzero_u32(&mut self) -> u32 {
        let v = self.u32_of(&[1, 2, 0x80, 0x8000_0000, u32::MAX]);
        v.max(1)
    }

    fn nonzero_u64(&mut self) -> u64 {
        let v = self.u64_of(&[1, 0x1000, 1 << 32, 1 << 63, u64::MAX]);
        v.max(1)
    }

    /// An ABI version other than ours.
    fn bad_version(&mut self) -> u32 {
        let v = self.u32_of(&[0, 1, 2, 3, 4, 6, 255, u32::MAX]);
        if v == RTB_ABI_VERSION {
            v + 1
        } else {
            v
        }
    }
}

/// Where an argument is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Readable and writable scratch memory.
    Rw,
    /// Read-only scratch memory.
    Ro,
    /// Its end runs into a guard page: partly readable.
    Straddle,
    /// Address 0.
    Null,
    /// An address that cannot be read: a guard page, a kernel or a
    /// non-canonical address.
    Wild,
}

impl Place {
    fn readable(self) -> bool {
        matches!(self, Place::Rw | Place::Ro)
    }
}

/// The fuzzer's own memory for everything it hands the kernel.
struct Scratch {
    base: usize,
}

impl Scratch {
    fn new() -> Self {
        // SAFETY: a fresh anonymous mapping the kernel chooses; only this
        // structure uses it, through raw pointers.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TOTAL,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap of the scratch area: errno {}",
            errno()
        );
        let s = Self { base: p as usize };
        s.protect(ARGS_OFF, ARGS_LEN, libc::PROT_READ | libc::PROT_WRITE);
        s.protect(BUFS_OFF, BUFS_LEN, libc::PROT_READ | libc::PROT_WRITE);
        s.protect(RO_OFF, RO_LEN, libc::PROT_READ);
        s
    }

    fn protect(&self, off: usize, len: usize, prot: i32) {
        // SAFETY: a page-aligned range inside the scratch mapping, which
        // nothing but this structure uses.
        let r = unsafe { libc::mprotect((self.base + off) as *mut c_void, len, prot) };
        assert_eq!(r, 0, "mprotect of the scratch area: errno {}", errno());
    }

    /// Copies `bytes` to offset `off`, which the caller has made writable.
    fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= TOTAL);
        // SAFETY: inside the scratch mapping and writable (see above); the
        // mapping is only accessed through raw pointers, so no reference
        // aliases it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.base + off) as *mut u8,
                bytes.len(),
            );
        }
    }

    /// Copies `bytes` into the read-only part at `off` (relative to it).
    fn write_ro(&self, off: usize, bytes: &[u8]) {
        self.protect(RO_OFF, RO_LEN, libc::PROT_READ | libc::PROT_WRITE);
        self.write(RO_OFF + off, bytes);
        self.protect(RO_OFF, RO_LEN, libc::PROT_READ);
    }

    /// Reads a `T` at `addr`, which must be in the arguments part.
    fn read<T: Plain>(&self, addr: u64) -> T {
        let off = addr as usize - self.base;
        assert!(off >= ARGS_OFF && off + size_of::<T>() <= ARGS_OFF + ARGS_LEN);
        // SAFETY: readable scratch memory (checked above); any bytes are a
        // valid `T` (Plain).
        unsafe { std::ptr::read_unaligned(addr as *const T) }
    }

    fn addr(&self, off: usize) -> u64 {
        (self.base + off) as u64
    }

    fn contains(&self, addr: u64) -> bool {
        (self.base as u64..(self.base + TOTAL) as u64).contains(&addr)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Control,
    Ring,
}

/// One of rtbackup's ioctls.
#[derive(Clone, Copy)]
struct Known {
    cmd: u32,
    name: &'static str,
    kind: Kind,
    /// Needs `CAP_SYS_ADMIN`.
    admin: bool,
    /// Writes an answer into the argument.
    answers: bool,
    size: usize,
}

const KNOWN: [Known; 10] = [
    Known {
        cmd: RTB_IOC_VERSION,
        name: "VERSION",
        kind: Kind::Control,
        admin: true,
        answers: true,
        size: size_of::<RtbVersion>(),
    },
    Known {
        cmd: RTB_IOC_ATTACH,
        name: "ATTACH",
        kind: Kind::Control,
        admin: true,
        answers: true,
        size: size_of::<RtbAttach>(),
    },
    Known {
        cmd: RTB_IOC_DETACH,
        name: "DETACH",
        kind: Kind::Control,
        admin: true,
        answers: false,
        size: size_of::<RtbDetach>(),
    },
    Known {
        cmd: RTB_IOC_LIST,
        name: "LIST",
        kind: Kind::Control,
        admin: true,
        answers: true,
        size: size_of::<RtbList>(),
    },
    Known {
        cmd: RTB_IOC_RING_OPEN,
        name: "RING_OPEN",
        kind: Kind::Control,
        admin: true,
        answers: false,
        size: size_of::<RtbRingOpen>(),
    },
    Known {
        cmd: RTB_IOC_MARK,
        name: "MARK",
        kind: Kind::Control,
        admin: true,
        answers: true,
        size: size_of::<RtbMark>(),
    },
    Known {
        cmd: RTB_IOC_DIRTY,
        name: "DIRTY",
        kind: Kind::Control,
        admin: true,
        answers: true,
        size: size_of::<RtbDirty>(),
    },
    Known {
        cmd: RTB_IOC_SET,
        name: "SET",
        kind: Kind::Control,
        admin: true,
        answers: false,
        size: size_of::<RtbSet>(),
    },
    Known {
        cmd: RTB_RING_IOC_ACK,
        name: "RING_ACK",
        kind: Kind::Ring,
        admin: false,
        answers: false,
        size: size_of::<RtbRingAck>(),
    },
    Known {
        cmd: RTB_RING_IOC_RESYNC,
        name: "RING_RESYNC",
        kind: Kind::Ring,
        admin: false,
        answers: true,
        size: size_of::<RtbResync>(),
    },
];

fn known(cmd: u32) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.cmd == cmd)
}

fn cmd_name(cmd: u32) -> String {
    match known(cmd) {
        Some(k) => k.name.to_string(),
        None => format!(
            "ioc(dir {}, type {:#x}, nr {}, size {})",
            cmd >> 30,
            (cmd >> 8) & 0xff,
            cmd & 0xff,
            (cmd >> 16) & 0x3fff
        ),
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOTTY => "ENOTTY",
        libc::EPROTO => "EPROTO",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// The outcome of a system call for the summary: "ok", or the errno it
/// just left.
fn sys_outcome(ok: bool) -> String {
    if ok {
        "ok".into()
    } else {
        errno_name(errno())
    }
}

/// A result for the summary: file descriptors are not told apart.
fn outcome(r: Result<i32, i32>) -> String {
    match r {
        Ok(0) => "ok".into(),
        Ok(_) => "ok (fd)".into(),
        Err(e) => errno_name(e),
    }
}

fn result_name(r: Result<i32, i32>) -> String {
    match r {
        Ok(v) => format!("ok ({v})"),
        Err(e) => errno_name(e),
    }
}

/// What must not change about a device when a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DevState {
    ident: Ident,
    state: u32,
    ring: Ring,
}

/// The ring's state in `RtbRingInfo`, without times and counters that
/// move by themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ring {
    size: u64,
    used: u64,
    head_seq: u64,
    tail_seq: u64,
    flags: u64,
    dirty: u64,
    resync: u64,
    durable: u64,
    overflows: u64,
    on_full: u32,
    block_timeout_ms: u32,
}

impl Ring {
    fn tracking(&self) -> bool {
        self.flags & u64::from(RTB_RING_F_TRACKING) != 0
    }
}

/// Which device it is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ident {
    lower_path: String,
    lower: (u32, u32),
    disk: (u32, u32),
    ring_id: u64,
}

type Snapshot = BTreeMap<u32, DevState>;

fn dev_state(i: &RtbDeviceInfo) -> DevState {
    let r = &i.ring;
    DevState {
        ident: Ident {
            lower_path: String::from_utf8_lossy(
                c_str_bytes(&i.lower_path).unwrap_or(&i.lower_path),
            )
            .into_owned(),
            lower: (i.lower_major, i.lower_minor),
            disk: (i.disk_major, i.disk_minor),
            ring_id: r.ring_id,
        },
        state: i.state,
        ring: Ring {
            size: r.size,
            used: r.used,
            head_seq: r.head_seq,
            tail_seq: r.tail_seq,
            flags: r.flags,
            dirty: r.dirty_chunks,
            resync: r.resync_chunks,
            durable: r.durable_seq,
            overflows: r.overflows,
            on_full: r.on_full,
            block_timeout_ms: r.block_timeout_ms,
        },
    }
}

fn idents(s: &Snapshot) -> BTreeMap<u32, &Ident> {
    s.iter().map(|(i, d)| (*i, &d.ident)).collect()
}

/// A device this run attached.
struct Dev {
    gen: u64,
    ring_size: u64,
    chunks: u64,
    /// Bytes of its bitmaps in the ABI's form.
    abi_bytes: u64,
}

/// A ring file descriptor this run holds.
struct RingFd {
    fd: i32,
    gen: u64,
    ring_size: u64,
    abi_bytes: u64,
}

/// A mapping of a ring.
struct Map {
    addr: usize,
    len: usize,
    gen: u64,
    ring_size: u64,
    /// Mapped with PROT_READ and never zapped: may be read.
    readable: bool,
    /// Its pages were dropped (MADV_DONTNEED): reading would fault.
    zapped: bool,
}

/// An open stacked disk.
struct DiskFd {
    fd: i32,
    gen: u64,
}

/// One request, as sent.
struct Call {
    fd: i32,
    kind: Kind,
    cmd: u32,
    bytes: Vec<u8>,
    place: Place,
    addr: u64,
}

struct Args {
    seed: u64,
    calls: u64,
    disks: Vec<String>,
    control: String,
    control_fd: Option<i32>,
    expect_unprivileged: bool,
    max_attaches: u64,
    verbose: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("rtb-ioctl-fuzz: {msg}");
    eprintln!(
        "usage: rtb-ioctl-fuzz [--seed N] [--calls N] [--disk DEV]... [--max-attaches N]\n\
         \x20                     [--control PATH] [--control-fd N] [--expect-unprivileged] [--verbose]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut a = Args {
        seed,
        calls: 5000,
        disks: Vec::new(),
        control: format!("/dev/{RTB_CONTROL_NAME}"),
        control_fd: None,
        expect_unprivileged: false,
        max_attaches: 12,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v}")))
        };
        match arg.as_str() {
            "--seed" => a.seed = number("--seed", value("--seed")),
            "--calls" => a.calls = number("--calls", value("--calls")),
            "--disk" => a.disks.push(value("--disk")),
            "--control" => a.control = value("--control"),
            "--control-fd" => {
                a.control_fd = Some(number("--control-fd", value("--control-fd")) as i32)
            }
            "--max-attaches" => a.max_attaches = number("--max-attaches", value("--max-attaches")),
            "--expect-unprivileged" => a.expect_unprivileged = true,
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => usage("a random ioctl fuzzer of rtbackup"),
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    a
}

/// Whether the effective capabilities hold `CAP_SYS_ADMIN` (bit 21).
fn has_cap_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// The names of the stacked disks in /dev and /sys/block: rtbackupN and
/// their partitions rtbackupNpM.
fn disk_nodes() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in ["/dev", "/sys/block"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_disk = name
                .strip_prefix(RTB_DISK_PREFIX)
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| c.is_ascii_digit());
            if is_disk {
                names.insert(format!("{dir}/{name}"));
            }
        }
    }
    names
}

/// The module's reference count, when the kernel shows it.
fn module_refs() -> Option<String> {
    std::fs::read_to_string("/sys/module/rtbackup/refcnt")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Retries `f` for up to five seconds until it returns true.
fn settles(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn close(fd: i32) -> i32 {
    // SAFETY: callers pass only file descriptors this program opened and
    // forgets afterwards.
    unsafe { libc::close(fd) }
}

struct Fuzzer {
    rng: Rng,
    s: Scratch,
    control: Option<i32>,
    control_path: String,
    privileged: bool,
    verbose: bool,
    disks: Vec<String>,
    calls: u64,
    done: u64,
    max_attaches: u64,
    /// Devices attached before the run: never touched.
    foreign: BTreeSet<u32>,
    devs: BTreeMap<u32, Dev>,
    detached_gens: BTreeSet<u64>,
    next_gen: u64,
    attaches: u64,
    rings: Vec<RingFd>,
    maps: Vec<Map>,
    disk_fds: Vec<DiskFd>,
    stats: BTreeMap<(String, String), u64>,
    failures: Vec<String>,
    /// Where `snapshot` lists the devices.
    list_buf: Vec<RtbDeviceInfo>,
}

impl Fuzzer {
    fn fail(&mut self, msg: String) {
        match self.failures.len() {
            0..50 => eprintln!("FAIL: {msg}"),
            50 => eprintln!("FAIL: (further failures are only counted)"),
            _ => {}
        }
        self.failures.push(msg);
    }

    fn count(&mut self, what: &str, result: String) {
        *self.stats.entry((what.to_string(), result)).or_default() += 1;
    }

    /// The device table, listed through the control fd; `None` without
    /// one or without `CAP_SYS_ADMIN` (LIST is refused then).
    fn snapshot(&mut self) -> Option<Snapshot> {
        if !self.privileged {
            return None;
        }
        let fd = self.control?;
        match list_into(fd, &mut self.list_buf) {
            Ok(n) => Some(
                self.list_buf[..n]
                    .iter()
                    .map(|i| (i.index, dev_state(i)))
                    .collect(),
            ),
            Err(e) => {
                self.fail(format!("RTB_IOC_LIST failed: {}", errno_name(e)));
                None
            }
        }
    }

    /// Whether a ring file or a mapping of the ring of `gen` is alive (then
    /// its agent handle is taken).
    fn ring_alive(&self, gen: u64) -> bool {
        self.rings.iter().any(|r| r.gen == gen) || self.maps.iter().any(|m| m.gen == gen)
    }

    /// An index for a request: mostly one of ours, never a foreign one.
    fn pick_index(&mut self) -> u32 {
        let ours: Vec<u32> = self.devs.keys().copied().collect();
        let i = match self.rng.below(10) {
            0..=4 if !ours.is_empty() => self.rng.pick(&ours),
            0..=5 => self.rng.below(8) as u32,
            6 => RTB_MAX_DEVICES - 1,
            7 => RTB_MAX_DEVICES,
            8 => u32::MAX,
            _ => self.rng.next() as u32,
        };
        self.unforeign(i)
    }

    fn unforeign(&self, index: u32) -> u32 {
        if self.foreign.contains(&index) {
            u32::MAX
        } else {
            index
        }
    }

    fn wild(&mut self) -> u64 {
        let guard = self.s.addr(self.rng.pick(&GUARDS)) + self.rng.below(PAGE as u64 / 8) * 8;
        self.rng.pick(&[
            guard,
            guard,
            0xffff_8880_0000_0000,
            0xffff_ffff_8100_0000,
            0x0000_8000_0000_0000,
            0xdead_0000_0000_0000,
            u64::MAX - 7,
            8,
        ])
    }

    fn random_place(&mut self) -> Place {
        match self.rng.below(100) {
            0..=69 => Place::Rw,
            70..=77 => Place::Ro,
            78..=85 => Place::Straddle,
            86..=92 => Place::Null,
            _ => Place::Wild,
        }
    }

    /// Puts an argument of `bytes` at a place of kind `place` in the
    /// arguments part; returns its address.
    fn place_arg(&mut self, bytes: &[u8], place: Place) -> u64 {
        let n = bytes.len().min(ARGS_LEN);
        match place {
            Place::Rw => {
                let mut off = self.rng.below((ARGS_LEN - n + 1) as u64) as usize;
                if !self.rng.one_in(8) {
                    off &= !7;
                }
                self.s.write(ARGS_OFF + off, &bytes[..n]);
                self.s.addr(ARGS_OFF + off)
            }
            Place::Straddle => {
                let keep = self.rng.below(n as u64) as usize;
                let off = ARGS_OFF + ARGS_LEN - keep;
                self.s.write(off, &bytes[..keep]);
                self.s.addr(off)
            }
            Place::Ro => {
                let n = n.min(RO_LEN);
                let off = if self.rng.one_in(2) {
                    RO_LEN - n
                } else {
                    self.rng.below((RO_LEN - n + 1) as u64) as usize & !7
                };
                self.s.write_ro(off, &bytes[..n]);
                self.s.addr(RO_OFF + off)
            }
            Place::Null => 0,
            Place::Wild => self.wild(),
        }
    }

    /// An address for a buffer a structure points to (a list's devices, a
    /// bitmap) of `need` bytes holding `content` (if given); usually valid.
    fn place_buf(&mut self, need: usize, content: Option<&[u8]>, valid: bool) -> u64 {
        let need = need.min(BUFS_LEN);
        let place = if valid {
            Place::Rw
        } else {
            self.rng.pick(&[
                Place::Rw,
                Place::Ro,
                Place::Straddle,
                Place::Null,
                Place::Wild,
            ])
        };
        match place {
            Place::Rw => {
                let off = BUFS_OFF + (self.rng.below((BUFS_LEN - need + 1) as u64) as usize & !7);
                if let Some(c) = content {
                    self.s.write(off, &c[..c.len().min(need)]);
                }
                self.s.addr(off)
            }
            Place::Straddle => {
                let keep = self.rng.below(need.max(1) as u64) as usize;
                let off = BUFS_OFF + BUFS_LEN - keep;
                if let Some(c) = content {
                    self.s.write(off, &c[..c.len().min(keep)]);
                }
                self.s.addr(off)
            }
            Place::Ro => {
                if let Some(c) = content {
                    self.s.write_ro(0, &c[..c.len().min(RO_LEN)]);
                }
                self.s.addr(RO_OFF)
            }
            Place::Null => 0,
            Place::Wild => self.wild(),
        }
    }

    /// A buffer address found in random bytes: kept when the kernel cannot
    /// write there or it is scratch memory, else moved into the buffers part
    /// (a random number could name memory of this program).
    fn safe_buf_addr(&mut self, addr: u64) -> u64 {
        if addr < PAGE as u64 || addr >= 0x0000_8000_0000_0000 || self.s.contains(addr) {
            addr
        } else {
            self.s
                .addr(BUFS_OFF + self.rng.below(BUFS_LEN as u64 / 8) as usize * 8)
        }
    }

    // ---- Structures -------------------------------------------------------

    /// How many fields to spoil: none half of the time.
    fn mutations(&mut self) -> u64 {
        self.rng.pick(&[0, 0, 0, 0, 1, 1, 1, 2, 3])
    }

    fn attach_path(&mut self, valid: bool) -> Vec<u8> {
        let paced = self.attaches < self.max_attaches
            && self.attaches * self.calls <= self.done * self.max_attaches;
        if valid && paced && !self.disks.is_empty() {
            let d = self.rng.pick(&(0..self.disks.len()).collect::<Vec<_>>());
            let disk = self.disks[d].clone().into_bytes();
            return match self.rng.below(6) {
                0 => {
                    // Garbage after the terminating NUL is ignored.
                    let mut p = disk;
                    p.push(0);
                    p.extend(self.rng.bytes(20));
                    p
                }
                1 => [
                    b"//dev/./".as_slice(),
                    disk.rsplit(|&b| b == b'/').next().unwrap_or(&[]),
                ]
                .concat(),
                _ => disk,
            };
        }
        let disk = self
            .disks
            .first()
            .cloned()
            .unwrap_or_else(|| "/dev/vdz".into());
        let ours: Vec<u32> = self.devs.keys().copied().collect();
        let stacked = format!(
            "/dev/{RTB_DISK_PREFIX}{}",
            ours.first().copied().unwrap_or(0)
        );
        let ctl_fd = format!("/proc/self/fd/{}", self.control.unwrap_or(0));
        let p: String = match self.rng.below(18) {
            0 => "/dev/null".into(),
            1 => "/dev/zero".into(),
            2 => format!("/dev/{RTB_CONTROL_NAME}"),
            3 => "/proc/self/status".into(),
            4 => "/etc/hostname".into(),
            5 => "/".into(),
            6 => "/tmp".into(),
            7 => "/sys/block".into(),
            8 => "/dev/does-not-exist".into(),
            9 => "relative/path".into(),
            10 => format!("{disk}/"),
            11 => stacked,
            12 => format!("{stacked}p1"),
            13 => ctl_fd,
            14 => "/".repeat(RTB_PATH_MAX - 1),
            15 => format!("/{}", "a/".repeat((RTB_PATH_MAX - 2) / 2)),
            16 => String::new(),
            _ => "/proc/self/root/dev/null".into(),
        };
        p.into_bytes()
    }

    fn set_path(a: &mut RtbAttach, path: &[u8]) {
        a.lower_path = [0; RTB_PATH_MAX];
        let n = path.len().min(RTB_PATH_MAX - 1);
        a.lower_path[..n].copy_from_slice(&path[..n]);
    }

    fn gen_attach(&mut self) -> Vec<u8> {
        let mut a = RtbAttach::ZERO;
        a.abi_version = RTB_ABI_VERSION;
        let path = self.attach_path(true);
        Self::set_path(&mut a, &path);
        if self.rng.one_in(3) {
            a.flags = RTB_ATTACH_TRACK;
        }
        a.ring_size = self.rng.pick(&RING_SIZES);
        if a.ring_size == 0 && !self.rng.one_in(4) {
            a.ring_size = 1 << 20;
        }
        a.chunk_size = self.rng.pick(&[0, 4096, 64 << 10, 1 << 20, 16 << 20]);
        for _ in 0..self.mutations() {
            match self.rng.below(10) {
                0 => a.abi_version = self.rng.bad_version(),
                1 => a.flags = self.rng.nonzero_u32() & !RTB_ATTACH_TRACK | 2,
                2 => {
                    a.block_timeout_ms = RTB_BLOCK_TIMEOUT_MAX_MS + 1 + self.rng.below(1000) as u32
                }
                3 => a.index = self.rng.nonzero_u32(),
                4 => a.reserved[self.rng.below(6) as usize] = self.rng.nonzero_u64(),
                5 => {
                    a.ring_size = self.rng.pick(&[
                        3 << 20,
                        1 << 19,
                        (1 << 20) + 1,
                        1 << 33,
                        1 << 40,
                        1 << 63,
                        u64::MAX,
                        1,
                        4095,
                    ])
                }
                6 => {
                    a.chunk_size =
                        self.rng
                            .pick(&[1000, 2048, 512, 256, 1, 32 << 20, 1 << 40, u64::MAX, 4097])
                }
                7 => {
                    let p = self.attach_path(false);
                    Self::set_path(&mut a, &p);
                }
                8 => {
                    // Unterminated.
                    let fill = self.rng.pick(&[b'/', b'a', 0xff]);
                    a.lower_path = [fill; RTB_PATH_MAX];
                }
                _ => {
                    a.lower_path[self.rng.below(RTB_PATH_MAX as u64) as usize] =
                        self.rng.next() as u8
                }
            }
        }
        a.to_bytes()
    }

    /// A detach or, with `ring_open`, a ring open: the two requests have
    /// the same fields (checked below).
    fn gen_index_req(&mut self, ring_open: bool) -> Vec<u8> {
        let mut d = RtbDetach::ZERO;
        d.abi_version = RTB_ABI_VERSION;
        d.index = self.pick_index();
        // Devices should live a while: most detaches of ours go elsewhere.
        if !ring_open && self.devs.contains_key(&d.index) && !self.rng.one_in(4) {
            d.index = RTB_MAX_DEVICES - 1 - self.rng.below(4) as u32;
            d.index = self.unforeign(d.index);
        }
        for _ in 0..self.mutations() {
            match self.rng.below(4) {
                0 => d.abi_version = self.rng.bad_version(),
                1 => d.flags = self.rng.nonzero_u32(),
                2 => d.pad = self.rng.nonzero_u32(),
                _ => d.reserved[self.rng.below(4) as usize] = self.rng.nonzero_u64(),
            }
        }
        d.to_bytes()
    }

    fn gen_list(&mut self) -> Vec<u8> {
        let mut l = RtbList::ZERO;
        l.abi_version = RTB_ABI_VERSION;
        l.capacity = self.rng.pick(&[0, 1, 2, 3, 16, 255, RTB_MAX_DEVICES]);
        let mut valid_buf = true;
        for _ in 0..self.mutations() {
            match self.rng.below(6) {
                0 => l.abi_version = self.rng.bad_version(),
                1 => l.flags = self.rng.nonzero_u32(),
                2 => l.count = self.rng.nonzero_u32(),
                3 => l.reserved[self.rng.below(2) as usize] = self.rng.nonzero_u64(),
                4 => l.capacity = self.rng.u32_of(&[RTB_MAX_DEVICES + 1, u32::MAX, 1 << 20]),
                _ => valid_buf = false,
            }
        }
        let need = (l.capacity.min(RTB_MAX_DEVICES) as usize) * size_of::<RtbDeviceInfo>();
        l.devices = self.place_buf(need, None, valid_buf);
        l.to_bytes()
    }

    fn mark_name(&mut self) -> Vec<u8> {
        const CHARS: &[u8] = b"abcxyzABCXYZ0189._-";
        let len = 1 + self.rng.below(RTB_MARK_NAME_MAX as u64) as usize;
        let mut name: Vec<u8> = (0..len).map(|_| self.rng.pick(CHARS)).collect();
        if name[0] == b'.' {
            name[0] = b'm';
        }
        name
    }

    /// A change of what a full ring does: valid (on a device of ours,
    /// mostly), or with a field spoilt.
    fn gen_set(&mut self) -> Vec<u8> {
        let mut q = RtbSet::ZERO;
        q.abi_version = RTB_ABI_VERSION;
        q.index = self.pick_index();
        q.flags = self.rng.pick(&[
            RTB_SET_ON_FULL,
            RTB_SET_BLOCK_TIMEOUT,
            RTB_SET_ON_FULL | RTB_SET_BLOCK_TIMEOUT,
        ]);
        if q.flags & RTB_SET_ON_FULL != 0 {
            q.on_full = self.rng.pick(&[RTB_ON_FULL_BLOCK, RTB_ON_FULL_TRACK]);
        }
        if q.flags & RTB_SET_BLOCK_TIMEOUT != 0 {
            q.block_timeout_ms = self
                .rng
                .pick(&[0, 1, 100, 30_000, RTB_BLOCK_TIMEOUT_MAX_MS]);
        }
        for _ in 0..self.mutations() {
            match self.rng.below(7) {
                0 => q.abi_version = self.rng.bad_version(),
                1 => q.flags = self.rng.pick(&[0, 4, 1 << 31, u32::MAX]),
                2 => q.pad = self.rng.nonzero_u32(),
                3 => q.reserved[self.rng.below(4) as usize] = self.rng.nonzero_u64(),
                4 => q.on_full = self.rng.pick(&[2, 3, 0x100, u32::MAX]),
                5 => {
                    q.block_timeout_ms = RTB_BLOCK_TIMEOUT_MAX_MS + 1 + self.rng.below(1000) as u32
                }
                // A setting the flags do not select must be zero.
                _ => {
                    q.flags = RTB_SET_ON_FULL;
                    q.block_timeout_ms = 1 + self.rng.below(1000) as u32;
                }
            }
        }
        q.to_bytes()
    }

    fn gen_mark(&mut self) -> Vec<u8> {
        let mut m = RtbMark::ZERO;
        m.abi_version = RTB_ABI_VERSION;
        m.index = self.pick_index();
        let name = self.mark_name();
        m.name[..name.len()].copy_from_slice(&name);
        m.name_len = name.len() as u32;
        for b in m.name[name.len()..].iter_mut() {
            *b = self.rng.next() as u8;
        }
        for _ in 0..self.mutations() {
            match self.rng.below(8) {
                0 => m.abi_version = self.rng.bad_version(),
                1 => m.flags = self.rng.nonzero_u32(),
                2 => {
                    m.name_len = self
                        .rng
                        .u32_of(&[0, RTB_MARK_NAME_MAX as u32 + 1, 255, u32::MAX])
                }
                3 => {
                    let at = self.rng.below(u64::from(m.name_len.clamp(1, 64))) as usize;
                    m.name[at] = self.rng.pick(b"@: /\0\xff\x7f\n");
                }
                4 => m.name[0] = b'.',
                5 => m.seq = self.rng.nonzero_u64(),
                6 => m.reserved[self.rng.below(4) as usize] = self.rng.nonzero_u64(),
                _ => m.index = self.rng.next() as u32,
            }
        }
        m.index = self.unforeign(m.index);
        m.to_bytes()
    }

    /// A bitmap of `abi_bytes` bytes for `chunks` chunks with a few bits
    /// set, none past the last chunk.
    fn bitmap(&mut self, chunks: u64, abi_bytes: u64) -> Vec<u8> {
        let mut words = vec![0u64; (abi_bytes / 8) as usize];
        for _ in 0..self.rng.below(6) {
            if chunks > 0 {
                let bit = self.rng.below(chunks);
                words[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn gen_dirty(&mut self) -> Vec<u8> {
        let mut d = RtbDirty::ZERO;
        d.abi_version = RTB_ABI_VERSION;
        d.index = self.pick_index();
        let (chunks, abi_bytes) = self
            .devs
            .get(&d.index)
            .map_or((2048, 256), |dev| (dev.chunks, dev.abi_bytes));
        let mut bits = self.bitmap(chunks, abi_bytes);
        d.bitmap_bytes = abi_bytes;
        let mut valid_buf = true;
        for _ in 0..self.mutations() {
            match self.rng.below(9) {
                0 => d.abi_version = self.rng.bad_version(),
                1 => d.flags = self.rng.nonzero_u32(),
                2 => d.pad = self.rng.nonzero_u32(),
                3 => d.reserved[self.rng.below(4) as usize] = self.rng.nonzero_u64(),
                4 => match self.rng.below(3) {
                    0 => d.count = self.rng.nonzero_u64(),
                    1 => d.chunks = self.rng.nonzero_u64(),
                    _ => d.chunk_size = self.rng.nonzero_u64(),
                },
                5 => {
                    d.bitmap_bytes = self.rng.pick(&[
                        0,
                        abi_bytes.wrapping_sub(8),
                        abi_bytes + 8,
                        abi_bytes + 1,
                        u64::MAX,
                        1 << 40,
                    ])
                }
                6 => {
                    // A bit past the last chunk (in the last word, if any).
                    if let Some(last) = bits.len().checked_sub(1) {
                        bits[last] |= 0x80;
                    }
                }
                7 => valid_buf = false,
                _ => {
                    let index = self.rng.next() as u32;
                    d.index = self.unforeign(index);
                }
            }
        }
        let need = (d.bitmap_bytes.min(BUFS_LEN as u64) as usize).max(bits.len());
        d.bitmap = self.place_buf(need, Some(&bits), valid_buf);
        d.to_bytes()
    }

    /// The ring's control page through a readable mapping of `gen`: (head,
    /// head_seq), after checking its fixed fields.
    fn ring_head(&mut self, gen: u64) -> Option<(u64, u64)> {
        let m = self
            .maps
            .iter()
            .find(|m| m.gen == gen && m.readable && !m.zapped)?;
        let (addr, ring_size) = (m.addr, m.ring_size);
        let field = |off: usize| {
            // SAFETY: the mapping is at least a page long, mapped readable
            // and not zapped (checked above, and kept so by this program):
            // reading its control page cannot fault.
            unsafe { std::ptr::read_volatile((addr + off) as *const u64) }
        };
        let (magic_abi, data_size, head, head_seq) = (field(0), field(16), field(40), field(56));
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let want = u64::from(RTB_RING_MAGIC) | (u64::from(RTB_ABI_VERSION) << 32);
        if magic_abi != want || data_size != ring_size {
            self.fail(format!(
                "ring control page: magic/version {magic_abi:#x} (want {want:#x}), data size {data_size} (want {ring_size})"
            ));
            return None;
        }
        Some((head, head_seq))
    }

    fn gen_ack(&mut self, gen: Option<u64>) -> Vec<u8> {
        let mut k = RtbRingAck::ZERO;
        k.abi_version = RTB_ABI_VERSION;
        let head = gen.and_then(|gen| self.ring_head(gen));
        let (h, hs) = head.unwrap_or((0, 1));
        k.tail = h;
        k.acked_seq = self.rng.pick(&[0, hs.saturating_sub(1)]);
        k.flags = self.rng.below(4) as u32 & (RTB_ACK_CONNECTED | RTB_ACK_SPOOLED);
        for _ in 0..self.mutations() {
            match self.rng.below(5) {
                0 => k.abi_version = self.rng.bad_version(),
                1 => k.flags |= self.rng.nonzero_u32() & !3 | 4,
                2 => {
                    k.tail = self.rng.u64_of(&[
                        h + 64,
                        h + 1,
                        h.wrapping_sub(64),
                        h.wrapping_sub(1),
                        u64::MAX,
                    ])
                }
                3 => k.acked_seq = self.rng.u64_of(&[hs, hs + 1, u64::MAX]),
                _ => k.reserved[self.rng.below(3) as usize] = self.rng.nonzero_u64(),
            }
        }
        k.to_bytes()
    }

    fn gen_resync(&mut self, abi_bytes: Option<u64>) -> Vec<u8> {
        let abi_bytes = abi_bytes.unwrap_or(256);
        let mut r = RtbResync::ZERO;
        r.abi_version = RTB_ABI_VERSION;
        r.op = self.rng.pick(&[
            RTB_RESYNC_TRACK_ALL,
            RTB_RESYNC_FETCH,
            RTB_RESYNC_FETCH,
            RTB_RESYNC_DONE,
        ]);
        let mut valid_buf = true;
        let mut fetch_args = r.op == RTB_RESYNC_FETCH;
        r.bitmap_bytes = abi_bytes + self.rng.pick(&[0, 0, 8, 4096]);
        r.flags = self.rng.below(4) as u32;
        for _ in 0..self.mutations() {
            match self.rng.below(9) {
                0 => r.abi_version = self.rng.bad_version(),
                1 => r.op = self.rng.u32_of(&[0, 4, 99, u32::MAX]),
                2 => r.flags |= self.rng.nonzero_u32() & !3 | 4,
                3 => r.pad = self.rng.nonzero_u32(),
                4 => match self.rng.below(5) {
                    0 => r.chunk_size = self.rng.nonzero_u64(),
                    1 => r.chunks = self.rng.nonzero_u64(),
                    2 => r.count = self.rng.nonzero_u64(),
                    3 => r.first_seq = self.rng.nonzero_u64(),
                    _ => r.head = self.rng.nonzero_u64(),
                },
                5 => r.reserved[self.rng.below(3) as usize] = self.rng.nonzero_u64(),
                6 => fetch_args = true,
                7 => valid_buf = false,
                _ => {
                    r.bitmap_bytes = self
                        .rng
                        .pick(&[0, abi_bytes.saturating_sub(8), 1, u64::MAX])
                }
            }
        }
        if fetch_args {
            // The kernel writes `abi_bytes` there, whatever `bitmap_bytes`
            // says: the buffer must hold them.
            let need = (abi_bytes as usize).max(8);
            r.bitmap = self.place_buf(need, None, valid_buf);
        } else {
            r.flags = 0;
            r.bitmap_bytes = 0;
        }
        r.to_bytes()
    }

    /// A structure for `k`, for a ring file `ring` (its gen and bitmap
    /// bytes) if any.
    fn gen_struct(&mut self, k: &Known, ring: Option<(u64, u64)>) -> Vec<u8> {
        match k.cmd {
            RTB_IOC_VERSION => self.rng.bytes(k.size),
            RTB_IOC_ATTACH => self.gen_attach(),
            RTB_IOC_DETACH => self.gen_index_req(false),
            RTB_IOC_LIST => self.gen_list(),
            RTB_IOC_RING_OPEN => self.gen_index_req(true),
            RTB_IOC_MARK => self.gen_mark(),
            RTB_IOC_DIRTY => self.gen_dirty(),
            RTB_IOC_SET => self.gen_set(),
            RTB_RING_IOC_ACK => self.gen_ack(ring.map(|(gen, _)| gen)),
            _ => self.gen_resync(ring.map(|(_, abi_bytes)| abi_bytes)),
        }
    }

    /// Makes random bytes for `cmd` safe to send: no buffer address that
    /// could name this program's memory, no foreign device.
    fn sanitize(&mut self, cmd: u32, bytes: &mut Vec<u8>) {
        match cmd {
            RTB_IOC_LIST => RtbList::edit(bytes, |l| l.devices = self.safe_buf_addr(l.devices)),
            RTB_IOC_DIRTY => RtbDirty::edit(bytes, |d| {
                d.bitmap = self.safe_buf_addr(d.bitmap);
                d.index = self.unforeign(d.index);
            }),
            RTB_RING_IOC_RESYNC => {
                RtbResync::edit(bytes, |r| r.bitmap = self.safe_buf_addr(r.bitmap));
            }
            RTB_IOC_DETACH => RtbDetach::edit(bytes, |d| d.index = self.unforeign(d.index)),
            RTB_IOC_RING_OPEN => RtbRingOpen::edit(bytes, |o| o.index = self.unforeign(o.index)),
            RTB_IOC_MARK => RtbMark::edit(bytes, |m| m.index = self.unforeign(m.index)),
            RTB_IOC_SET => RtbSet::edit(bytes, |q| q.index = self.unforeign(q.index)),
            // A valid huge ring would be a test of the guest's memory.
            RTB_IOC_ATTACH => RtbAttach::edit(bytes, |a| {
                if a.ring_size.is_power_of_two() && a.ring_size > RING_SIZE_CAP {
                    a.ring_size = 1 << 20;
                }
            }),
            _ => {}
        }
    }

    /// Whether `m` would be recorded (not refused) by the module.
    fn mark_valid(&self, m: &RtbMark) -> bool {
        m.abi_version == RTB_ABI_VERSION
            && m.flags == 0
            && m.seq == 0
            && m.reserved.iter().all(|&r| r == 0)
            && m.name_bytes().is_some_and(|n| check_mark_name(n).is_ok())
            && self.devs.contains_key(&m.index)
    }

    /// A valid mark waits, uninterruptibly, while the ring is full: spoil
    /// it unless the ring has room.
    fn guard_mark(&mut self, bytes: &mut Vec<u8>, pre: Option<&Snapshot>) {
        let Some(mut m) = RtbMark::from_bytes(bytes) else {
            return;
        };
        if !self.mark_valid(&m) {
            return;
        }
        let room = pre
            .and_then(|s| s.get(&m.index))
            .is_some_and(|d| d.ring.tracking() || d.ring.used + (64 << 10) <= d.ring.size);
        if !room {
            m.name_len = 0;
            *bytes = m.to_bytes();
        }
    }

    // ---- Calls ------------------------------------------------------------

    /// A random ioctl number for a file of `kind`.
    fn pick_cmd(&mut self, kind: Kind) -> u32 {
        let own: Vec<&Known> = KNOWN.iter().filter(|k| k.kind == kind).collect();
        match self.rng.below(8) {
            0..=3 => {
                if self.rng.one_in(5) {
                    self.rng.pick(&KNOWN).cmd
                } else {
                    self.rng.pick(&own).cmd
                }
            }
            4 | 5 => {
                let k = self.rng.pick(&KNOWN).cmd;
                let (dir, ty, nr, size) = (k >> 30, (k >> 8) & 0xff, k & 0xff, (k >> 16) & 0x3fff);
                let c = match self.rng.below(6) {
                    0 => ioc_type((dir + 1 + self.rng.below(3) as u32) & 3, ty, nr, size),
                    1 => {
                        let d = self.rng.pick(&[1, 4, 8, 16, 64]);
                        let s = if self.rng.one_in(2) {
                            size + d
                        } else {
                            size.wrapping_sub(d)
                        };
                        ioc_type(dir, ty, nr, s)
                    }
                    2 => ioc_type(dir, ty, nr, self.rng.pick(&[0, 0x3fff])),
                    3 => ioc_type(
                        dir,
                        ty,
                        if self.rng.one_in(2) {
                            nr + 1
                        } else {
                            nr.wrapping_sub(1)
                        },
                        size,
                    ),
                    4 => ioc_type(dir, self.rng.pick(&[0xba, 0xbc]), nr, size),
                    _ => ioc_type(dir, ty, nr ^ 0x10, size),
                };
                if c == k {
                    c ^ (1 << 30)
                } else {
                    c
                }
            }
            _ => {
                let nr = if self.rng.one_in(2) {
                    self.rng.below(32)
                } else {
                    self.rng.below(256)
                } as u32;
                let (small, any) = (self.rng.below(1024), self.rng.below(0x4000));
                let size = self.rng.pick(&[0, 8, 40, 48, 88, 96, 120, 336, small, any]);
                ioc_type(self.rng.below(4) as u32, RTB_IOC_MAGIC, nr, size as u32)
            }
        }
    }

    /// A random ioctl on the control device or a ring file.
    fn ioctl_step(&mut self) {
        let use_ring = !self.rings.is_empty() && (self.control.is_none() || self.rng.one_in(3));
        let (fd, kind, ring) = if use_ring {
            let r = &self.rings[self.rng.below(self.rings.len() as u64) as usize];
            (r.fd, Kind::Ring, Some((r.gen, r.abi_bytes)))
        } else if let Some(fd) = self.control {
            (fd, Kind::Control, None)
        } else {
            return;
        };
        let cmd = self.pick_cmd(kind);
        let mut bytes = match known(cmd) {
            Some(k) if !self.rng.one_in(5) => self.gen_struct(k, ring),
            _ => {
                let n = ((cmd >> 16) & 0x3fff).max(if self.rng.one_in(2) { 8 } else { 0 }) as usize;
                self.rng.bytes(n)
            }
        };
        self.sanitize(cmd, &mut bytes);
        let place = self.random_place();
        self.call(Call {
            fd,
            kind,
            cmd,
            bytes,
            place,
            addr: 0,
        });
    }

    /// Sends `c` (placing its bytes), checks the result and follows the
    /// device table.
    fn call(&mut self, mut c: Call) {
        let pre = self.snapshot();
        if c.cmd == RTB_IOC_MARK && c.kind == Kind::Control {
            self.guard_mark(&mut c.bytes, pre.as_ref());
        }
        c.addr = self.place_arg(&c.bytes, c.place);
        // SAFETY: `c.addr` is in the scratch area or cannot be written, as
        // is every buffer address in the request (see `place_arg`,
        // `place_buf` and `sanitize`); the kernel writes nothing else.
        let r = unsafe { ioctl_ret(c.fd, c.cmd, c.addr as *mut c_void) };
        let post = self.snapshot();
        let name = cmd_name(c.cmd);
        let kind = match c.kind {
            Kind::Control => "",
            Kind::Ring => "ring ",
        };
        // Numbers that are not rtbackup's are counted together.
        let bucket = match known(c.cmd) {
            Some(k) => k.name.to_string(),
            None if (c.cmd >> 8) & 0xff == RTB_IOC_MAGIC => "other 0xBB number".into(),
            None => "other type".into(),
        };
        self.count(&format!("{kind}{bucket}"), outcome(r));
        if self.verbose {
            println!(
                "#{} {kind}{name} at {:?} {:#x}: {}",
                self.done,
                c.place,
                c.addr,
                result_name(r)
            );
        }
        let before = self.failures.len();
        self.judge(&c, r, pre.as_ref(), post.as_ref());
        if self.failures.len() > before && before < 50 {
            eprintln!(
                "  (call #{}: {kind}{name} = {:#x}, argument {:?} at {:#x}, {}, bytes {:02x?})",
                self.done,
                c.cmd,
                c.place,
                c.addr,
                result_name(r),
                &c.bytes[..c.bytes.len().min(64)]
            );
        }
    }

    /// Checks the rules every request follows, and follows the table.
    fn judge(
        &mut self,
        c: &Call,
        r: Result<i32, i32>,
        pre: Option<&Snapshot>,
        post: Option<&Snapshot>,
    ) {
        let k = known(c.cmd).filter(|k| k.kind == c.kind);
        let what = cmd_name(c.cmd);
        let Some(k) = k else {
            if r != Err(libc::ENOTTY) {
                self.fail(format!(
                    "{what} on a {:?} file: {}, want ENOTTY",
                    c.kind,
                    result_name(r)
                ));
            }
            self.check_table(c, r, pre, post);
            return;
        };
        let denied = k.admin && !self.privileged;
        if denied {
            if !matches!(r, Err(libc::EPERM | libc::EACCES)) {
                self.fail(format!(
                    "{what} without CAP_SYS_ADMIN: {}, want EPERM",
                    result_name(r)
                ));
            }
        } else if !c.place.readable() {
            if r != Err(libc::EFAULT) {
                self.fail(format!(
                    "{what} with its argument at {:?} {:#x}: {}, want EFAULT",
                    c.place,
                    c.addr,
                    result_name(r)
                ));
            }
        } else {
            let version = u32::from_ne_bytes([c.bytes[0], c.bytes[1], c.bytes[2], c.bytes[3]]);
            if c.cmd != RTB_IOC_VERSION && version != RTB_ABI_VERSION && r != Err(libc::EPROTO) {
                self.fail(format!(
                    "{what} with ABI version {version}: {}, want EPROTO",
                    result_name(r)
                ));
            }
            if c.place == Place::Ro && k.answers && r.is_ok() {
                self.fail(format!(
                    "{what} answered into read-only memory and succeeded"
                ));
            }
        }
        if let Ok(v) = r {
            if v != 0 && c.cmd != RTB_IOC_RING_OPEN {
                self.fail(format!("{what} returned {v}"));
            }
        }
        match c.cmd {
            RTB_IOC_RING_OPEN => self.judge_ring_open(c, r, denied),
            RTB_IOC_DETACH if !denied && c.place.readable() => {
                if let Some(d) = RtbDetach::from_bytes(&c.bytes) {
                    let valid = d.abi_version == RTB_ABI_VERSION
                        && d.flags == 0
                        && d.pad == 0
                        && d.reserved.iter().all(|&x| x == 0);
                    let held = self
                        .devs
                        .get(&d.index)
                        .is_some_and(|dev| self.disk_fds.iter().any(|f| f.gen == dev.gen));
                    if valid && held && r != Err(libc::EBUSY) {
                        self.fail(format!(
                            "DETACH of rtbackup{} held open: {}, want EBUSY",
                            d.index,
                            result_name(r)
                        ));
                    }
                }
            }
            RTB_IOC_VERSION if r.is_ok() && c.place == Place::Rw => {
                let v: RtbVersion = self.s.read(c.addr);
                let release = c_str_bytes(&v.release).unwrap_or(&[]);
                if v.abi_version != RTB_ABI_VERSION
                    || v.pad != 0
                    || release != RTB_RELEASE.as_bytes()
                {
                    self.fail(format!("VERSION answered {v:?}"));
                }
            }
            RTB_IOC_LIST if r.is_ok() && c.place == Place::Rw => {
                let l: RtbList = self.s.read(c.addr);
                if let Some(pre) = pre {
                    if l.count as usize != pre.len() {
                        self.fail(format!(
                            "LIST answered count {} with {} attached",
                            l.count,
                            pre.len()
                        ));
                    }
                }
            }
            RTB_IOC_MARK if r.is_ok() && c.place == Place::Rw => {
                let m: RtbMark = self.s.read(c.addr);
                let seqs = pre
                    .and_then(|p| p.get(&m.index))
                    .zip(post.and_then(|p| p.get(&m.index)))
                    .map(|(a, b)| (a.ring.head_seq, b.ring.head_seq));
                if let Some((before, after)) = seqs {
                    if m.seq != before || after != before + 1 {
                        self.fail(format!(
                            "MARK of rtbackup{} answered seq {} (head_seq was {before}, is {after})",
                            m.index, m.seq
                        ));
                    }
                }
            }
            _ => {}
        }
        self.check_table(c, r, pre, post);
    }

    fn judge_ring_open(&mut self, c: &Call, r: Result<i32, i32>, denied: bool) {
        let req = RtbRingOpen::from_bytes(&c.bytes);
        if !denied && c.place.readable() {
            if let Some(o) = req {
                let valid = o.abi_version == RTB_ABI_VERSION
                    && o.flags == 0
                    && o.pad == 0
                    && o.reserved.iter().all(|&x| x == 0);
                let want = match self.devs.get(&o.index) {
                    _ if !valid => None,
                    Some(dev) if self.ring_alive(dev.gen) => Some(Err(libc::EBUSY)),
                    Some(_) => Some(Ok(())),
                    None => Some(Err(libc::ENXIO)),
                };
                let got = r.map(|_| ());
                if want.is_some_and(|w| w != got) {
                    self.fail(format!(
                        "RING_OPEN of rtbackup{}: {}, want {}",
                        o.index,
                        result_name(r),
                        want.map_or("?".into(), |w| result_name(w.map(|()| 0)))
                    ));
                }
            }
        }
        let Ok(fd) = r else {
            return;
        };
        match req.and_then(|o| self.devs.get(&o.index)) {
            Some(dev) if fd > 0 && c.place.readable() => {
                let ring = RingFd {
                    fd,
                    gen: dev.gen,
                    ring_size: dev.ring_size,
                    abi_bytes: dev.abi_bytes,
                };
                self.rings.push(ring);
            }
            _ => {
                self.fail(format!(
                    "RING_OPEN returned {fd} for a request naming no device of this run"
                ));
                if fd > 2 {
                    close(fd);
                }
            }
        }
    }

    /// The device table against what `c` did.
    fn check_table(
        &mut self,
        c: &Call,
        r: Result<i32, i32>,
        pre: Option<&Snapshot>,
        post: Option<&Snapshot>,
    ) {
        let (Some(pre), Some(post)) = (pre, post) else {
            return;
        };
        let exact = known(c.cmd).is_some_and(|k| k.kind == c.kind) && r.is_ok();
        let attached = exact && c.cmd == RTB_IOC_ATTACH;
        let detached = exact && c.cmd == RTB_IOC_DETACH;
        let what = cmd_name(c.cmd);
        let (a, b) = (idents(pre), idents(post));
        let added: Vec<u32> = b.keys().filter(|i| !a.contains_key(i)).copied().collect();
        let removed: Vec<u32> = a.keys().filter(|i| !b.contains_key(i)).copied().collect();
        let kept_same = a.iter().all(|(i, id)| b.get(i).is_none_or(|x| x == id));
        if attached {
            if added.len() != 1 || !removed.is_empty() || !kept_same {
                self.fail(format!(
                    "ATTACH succeeded but the table went from {a:?} to {b:?}"
                ));
            }
            if let Some(&index) = added.first() {
                self.adopt(index, &post[&index], c);
            }
            return;
        }
        if detached {
            let want = RtbDetach::from_bytes(&c.bytes).map(|d| d.index);
            if removed.len() != 1
                || want != removed.first().copied()
                || !added.is_empty()
                || !kept_same
            {
                self.fail(format!(
                    "DETACH of {want:?} succeeded but the table went from {a:?} to {b:?}"
                ));
            }
            for index in removed {
                if let Some(dev) = self.devs.remove(&index) {
                    self.detached_gens.insert(dev.gen);
                } else {
                    self.fail(format!(
                        "rtbackup{index}, attached before this run, was detached"
                    ));
                }
            }
            return;
        }
        if a != b {
            self.fail(format!(
                "{what} ({}) changed the device table from {a:?} to {b:?}",
                result_name(r)
            ));
            return;
        }
        if exact && c.cmd == RTB_IOC_SET {
            self.check_set(c, pre, post);
        }
        // A refused request, a version or a list changes no device of ours.
        let read_only = matches!(c.cmd, RTB_IOC_VERSION | RTB_IOC_LIST)
            || known(c.cmd).is_none_or(|k| k.kind != c.kind);
        if r.is_err() || read_only {
            let changed: Vec<u32> = self
                .devs
                .keys()
                .filter(|i| pre.get(i) != post.get(i))
                .copied()
                .collect();
            for index in changed {
                self.fail(format!(
                    "{what} ({}) changed rtbackup{index}: {:?} -> {:?}",
                    result_name(r),
                    pre.get(&index),
                    post.get(&index)
                ));
            }
        }
    }

    /// A SET that succeeded: the device it names has the settings it
    /// selected, and the others as before.
    fn check_set(&mut self, c: &Call, pre: &Snapshot, post: &Snapshot) {
        let Some(q) = RtbSet::from_bytes(&c.bytes) else {
            return;
        };
        let (Some(before), Some(after)) = (pre.get(&q.index), post.get(&q.index)) else {
            self.fail(format!(
                "SET of rtbackup{} succeeded without the device",
                q.index
            ));
            return;
        };
        let on_full = if q.flags & RTB_SET_ON_FULL != 0 {
            q.on_full
        } else {
            before.ring.on_full
        };
        let ms = if q.flags & RTB_SET_BLOCK_TIMEOUT != 0 {
            q.block_timeout_ms
        } else {
            before.ring.block_timeout_ms
        };
        if (after.ring.on_full, after.ring.block_timeout_ms) != (on_full, ms) {
            self.fail(format!(
                "SET {q:?} left rtbackup{} with on_full {} and block timeout {} ms",
                q.index, after.ring.on_full, after.ring.block_timeout_ms
            ));
        }
    }

    /// Takes a device the last request attached as ours.
    fn adopt(&mut self, index: u32, st: &DevState, c: &Call) {
        if c.place == Place::Rw {
            let a: RtbAttach = self.s.read(c.addr);
            if a.index != index {
                self.fail(format!(
                    "ATTACH answered index {} but rtbackup{index} appeared",
                    a.index
                ));
            }
        }
        let info = self
            .control
            .and_then(|fd| list(fd).ok())
            .and_then(|l| l.into_iter().find(|i| i.index == index));
        let chunks = info.map_or(0, |i| {
            (i.capacity_sectors * 512).div_ceil(i.ring.chunk_size.max(512))
        });
        self.next_gen += 1;
        self.attaches += 1;
        self.devs.insert(
            index,
            Dev {
                gen: self.next_gen,
                ring_size: st.ring.size,
                chunks,
                abi_bytes: chunks.div_ceil(64) * 8,
            },
        );
        println!(
            "[rtb-ioctl-fuzz] call {}: attached rtbackup{index} on {} (ring {} KiB, {chunks} chunks)",
            self.done,
            st.ident.lower_path,
            st.ring.size >> 10
        );
    }

    // ---- Other operations ---------------------------------------------------

    /// A valid request of `cmd` on the control device, through `call`.
    fn control_call(&mut self, cmd: u32, bytes: Vec<u8>) {
        if let Some(fd) = self.control {
            self.call(Call {
                fd,
                kind: Kind::Control,
                cmd,
                bytes,
                place: Place::Rw,
                addr: 0,
            });
        }
    }

    fn other_step(&mut self) {
        let have_rings = !self.rings.is_empty();
        let have_maps = !self.maps.is_empty();
        match self.rng.below(16) {
            0 if self.privileged && !self.devs.is_empty() => {
                let index = self
                    .rng
                    .pick(&self.devs.keys().copied().collect::<Vec<_>>());
                let mut o = RtbRingOpen::ZERO;
                o.abi_version = RTB_ABI_VERSION;
                o.index = index;
                self.control_call(RTB_IOC_RING_OPEN, o.to_bytes());
            }
            1 if self.privileged && !self.disks.is_empty() => {
                let bytes = {
                    let mut a =
                        RtbAttach::from_bytes(&self.gen_attach()).unwrap_or(RtbAttach::ZERO);
                    a.abi_version = RTB_ABI_VERSION;
                    a.flags &= RTB_ATTACH_TRACK;
                    a.block_timeout_ms = a.block_timeout_ms.min(RTB_BLOCK_TIMEOUT_MAX_MS);
                    a.index = 0;
                    a.reserved = [0; 6];
                    a.to_bytes()
                };
                let mut bytes = bytes;
                self.sanitize(RTB_IOC_ATTACH, &mut bytes);
                self.control_call(RTB_IOC_ATTACH, bytes);
            }
            2 if self.privileged && !self.devs.is_empty() && self.rng.one_in(3) => {
                let index = self
                    .rng
                    .pick(&self.devs.keys().copied().collect::<Vec<_>>());
                let mut d = RtbDetach::ZERO;
                d.abi_version = RTB_ABI_VERSION;
                d.index = index;
                self.control_call(RTB_IOC_DETACH, d.to_bytes());
            }
            3 if have_rings => self.close_ring(),
            4 if have_rings && self.rings.len() < 8 => self.dup_ring(),
            5 | 6 if have_rings => self.mmap_ring(),
            7 if have_maps => self.munmap_ring(),
            8 if have_maps => self.mprotect_ring(),
            9 if have_maps => self.mremap_ring(),
            10 if have_maps && self.rng.one_in(3) => self.madvise_ring(),
            11 if have_rings => self.ack_head(),
            12 if have_rings => self.poll_rings(),
            13 => self.read_write(),
            14 => self.mmap_control(),
            15 if self.privileged => self.disk_open_close(),
            _ => self.ioctl_step(),
        }
    }

    fn close_ring(&mut self) {
        let i = self.rng.below(self.rings.len() as u64) as usize;
        let r = self.rings.swap_remove(i);
        let rc = close(r.fd);
        self.count("close ring", rc.to_string());
        if rc != 0 {
            let e = errno();
            self.fail(format!("close of ring fd {}: {}", r.fd, errno_name(e)));
        }
    }

    fn dup_ring(&mut self) {
        let i = self.rng.below(self.rings.len() as u64) as usize;
        let (fd, gen, ring_size, abi_bytes) = {
            let r = &self.rings[i];
            (r.fd, r.gen, r.ring_size, r.abi_bytes)
        };
        // SAFETY: duplicates a descriptor of ours; the copy is tracked.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        self.count("dup ring", sys_outcome(new >= 0));
        if new >= 0 {
            self.rings.push(RingFd {
                fd: new,
                gen,
                ring_size,
                abi_bytes,
            });
        }
    }

    fn mmap_ring(&mut self) {
        let i = self.rng.below(self.rings.len() as u64) as usize;
        let (fd, gen, ring_size) = (self.rings[i].fd, self.rings[i].gen, self.rings[i].ring_size);
        let total = PAGE + ring_size as usize;
        let some_pages = (self.rng.below(64) as usize + 1) * PAGE;
        let len = self.rng.pick(&[
            PAGE,
            PAGE,
            total,
            total,
            total - PAGE,
            PAGE / 2,
            total + PAGE,
            total * 2,
            0,
            1 << 40,
            some_pages,
        ]);
        let prot = self.rng.pick(&[
            libc::PROT_READ,
            libc::PROT_READ,
            libc::PROT_READ,
            libc::PROT_NONE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_EXEC,
        ]);
        let mut flags = self
            .rng
            .pick(&[libc::MAP_SHARED, libc::MAP_SHARED, libc::MAP_PRIVATE]);
        if self.rng.one_in(4) {
            flags |= libc::MAP_POPULATE;
        }
        let offset = self
            .rng
            .pick(&[0, 0, 0, 0, PAGE as i64, total as i64, 1, 1 << 30]);
        // SAFETY: a new mapping where the kernel chooses (no MAP_FIXED):
        // it cannot replace memory of ours. It is tracked and read only
        // while readable.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        let rounded = len.div_ceil(PAGE) * PAGE;
        let allowed = prot & (libc::PROT_WRITE | libc::PROT_EXEC) == 0
            && offset == 0
            && len > 0
            && rounded <= total;
        let ok = p != libc::MAP_FAILED;
        self.count("mmap ring", sys_outcome(ok));
        if ok {
            self.maps.push(Map {
                addr: p as usize,
                len: rounded,
                gen,
                ring_size,
                readable: prot & libc::PROT_READ != 0,
                zapped: false,
            });
        }
        if ok != allowed {
            self.fail(format!(
                "mmap of a ring ({total} bytes) with length {len}, prot {prot:#x}, flags {flags:#x}, offset {offset}: {}",
                if ok { "succeeded".into() } else { errno_name(errno()) }
            ));
        }
        if self.maps.len() > 16 {
            self.unmap(0);
        }
    }

    fn unmap(&mut self, i: usize) {
        let m = self.maps.swap_remove(i);
        // SAFETY: a mapping of a ring this program made and no longer uses.
        let rc = unsafe { libc::munmap(m.addr as *mut c_void, m.len) };
        if rc != 0 {
            let e = errno();
            self.fail(format!("munmap of a ring mapping: {}", errno_name(e)));
        }
    }

    fn munmap_ring(&mut self) {
        let i = self.rng.below(self.maps.len() as u64) as usize;
        self.count("munmap ring", "ok".into());
        self.unmap(i);
    }

    fn mprotect_ring(&mut self) {
        let i = self.rng.below(self.maps.len() as u64) as usize;
        let prot = self.rng.pick(&[
            libc::PROT_READ,
            libc::PROT_NONE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_EXEC,
        ]);
        let (addr, len) = (self.maps[i].addr, self.maps[i].len);
        // SAFETY: a ring mapping of ours; it is never written, and read only
        // while `readable` says so (updated below).
        let rc = unsafe { libc::mprotect(addr as *mut c_void, len, prot) };
        let e = errno();
        self.count(
            "mprotect ring",
            if rc == 0 { "ok".into() } else { errno_name(e) },
        );
        let allowed = prot & (libc::PROT_WRITE | libc::PROT_EXEC) == 0;
        if (rc == 0) != allowed {
            self.fail(format!(
                "mprotect({prot:#x}) of a ring mapping: {}",
                if rc == 0 {
                    "succeeded".into()
                } else {
                    errno_name(e)
                }
            ));
        }
        if rc == 0 {
            self.maps[i].readable = prot & libc::PROT_READ != 0;
        }
    }

    fn mremap_ring(&mut self) {
        let i = self.rng.below(self.maps.len() as u64) as usize;
        let (addr, len) = (self.maps[i].addr, self.maps[i].len);
        let grow = len <= PAGE || self.rng.one_in(2);
        let new_len = if grow { len + PAGE } else { len - PAGE };
        let flags = if grow { libc::MREMAP_MAYMOVE } else { 0 };
        // SAFETY: a ring mapping of ours, which may move (no MREMAP_FIXED):
        // nothing else of ours is touched; the new place is tracked.
        let p = unsafe { libc::mremap(addr as *mut c_void, len, new_len, flags) };
        let ok = p != libc::MAP_FAILED;
        let e = errno();
        self.count(
            if grow {
                "mremap ring grow"
            } else {
                "mremap ring shrink"
            },
            if ok { "ok".into() } else { errno_name(e) },
        );
        if ok {
            self.maps[i].addr = p as usize;
            self.maps[i].len = new_len;
        }
        if ok == grow {
            self.fail(format!(
                "mremap of a ring mapping from {len} to {new_len} bytes: {}",
                if ok {
                    "succeeded".into()
                } else {
                    errno_name(e)
                }
            ));
        }
    }

    fn madvise_ring(&mut self) {
        let i = self.rng.below(self.maps.len() as u64) as usize;
        let (addr, len) = (self.maps[i].addr, self.maps[i].len);
        // SAFETY: a ring mapping of ours; afterwards it is never read
        // (zapped), since a fault there would be fatal.
        let rc = unsafe { libc::madvise(addr as *mut c_void, len, libc::MADV_DONTNEED) };
        self.count("madvise ring", sys_outcome(rc == 0));
        self.maps[i].zapped = true;
    }

    /// Acknowledges everything in a ring, through a readable mapping of it.
    fn ack_head(&mut self) {
        let i = self.rng.below(self.rings.len() as u64) as usize;
        let (fd, gen) = (self.rings[i].fd, self.rings[i].gen);
        let Some((head, head_seq)) = self.ring_head(gen) else {
            return;
        };
        let mut k = RtbRingAck::ZERO;
        k.abi_version = RTB_ABI_VERSION;
        k.tail = head;
        k.acked_seq = head_seq - 1;
        k.flags = RTB_ACK_CONNECTED;
        self.call(Call {
            fd,
            kind: Kind::Ring,
            cmd: RTB_RING_IOC_ACK,
            bytes: k.to_bytes(),
            place: Place::Rw,
            addr: 0,
        });
    }

    fn poll_rings(&mut self) {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.fd,
                events: libc::POLLIN | libc::POLLOUT | libc::POLLPRI,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is an array of that many pollfd; no waiting.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        self.count("poll rings", sys_outcome(n >= 0));
        let snap = self.snapshot();
        for (i, p) in fds.iter().enumerate() {
            let gen = self.rings[i].gen;
            let detached = self.detached_gens.contains(&gen);
            let hup = p.revents & libc::POLLHUP != 0;
            if p.revents & libc::POLLNVAL != 0 || hup != detached {
                self.fail(format!(
                    "poll of a ring file ({}): revents {:#x}",
                    if detached { "detached" } else { "attached" },
                    p.revents
                ));
            }
            let dev = self
                .devs
                .iter()
                .find(|(_, d)| d.gen == gen)
                .map(|(i, _)| *i);
            let state = dev.and_then(|i| snap.as_ref().and_then(|s| s.get(&i)));
            if let Some(st) = state {
                let due = st.ring.used != 0 || st.ring.tracking();
                if due != (p.revents & libc::POLLIN != 0) {
                    self.fail(format!(
                        "poll of a ring: revents {:#x}, ring {:?}",
                        p.revents, st.ring
                    ));
                }
            }
        }
    }

    /// read and write on the control device or a ring file: neither has
    /// them.
    fn read_write(&mut self) {
        let mut fds: Vec<i32> = self.rings.iter().map(|r| r.fd).collect();
        fds.extend(self.control);
        if fds.is_empty() {
            return;
        }
        let fd = self.rng.pick(&fds);
        let len = self.rng.pick(&[0usize, 1, 64, 4096]);
        let place = self
            .rng
            .pick(&[Place::Rw, Place::Rw, Place::Null, Place::Wild]);
        let bytes = self.rng.bytes(len);
        let buf = self.place_arg(&bytes, place) as *mut c_void;
        let write = self.rng.one_in(2);
        // SAFETY: the buffer is scratch memory of `len` bytes, or an address
        // the kernel cannot use.
        let n = unsafe {
            if write {
                libc::write(fd, buf, len)
            } else {
                libc::read(fd, buf, len)
            }
        };
        let what = if write { "write" } else { "read" };
        self.count(
            what,
            if n >= 0 {
                n.to_string()
            } else {
                errno_name(errno())
            },
        );
        if n > 0 {
            self.fail(format!("{what} of {len} bytes on fd {fd} returned {n}"));
        }
    }

    fn mmap_control(&mut self) {
        let Some(fd) = self.control else {
            return;
        };
        let prot = self
            .rng
            .pick(&[libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE]);
        // SAFETY: a new mapping where the kernel chooses; unmapped at once
        // if it is made at all.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, prot, libc::MAP_SHARED, fd, 0) };
        self.count("mmap control", sys_outcome(p != libc::MAP_FAILED));
        if p != libc::MAP_FAILED {
            self.fail("the control device could be mapped".into());
            // SAFETY: the mapping just made.
            unsafe { libc::munmap(p, PAGE) };
        }
    }

    /// Opens a stacked disk of ours (a detach must then fail with EBUSY),
    /// or closes one.
    fn disk_open_close(&mut self) {
        if !self.disk_fds.is_empty() && (self.disk_fds.len() >= 2 || self.rng.one_in(2)) {
            let i = self.rng.below(self.disk_fds.len() as u64) as usize;
            let f = self.disk_fds.swap_remove(i);
            self.count("close disk", close(f.fd).to_string());
            return;
        }
        let Some((&index, dev)) = self
            .devs
            .iter()
            .nth(self.rng.below(self.devs.len() as u64) as usize)
        else {
            return;
        };
        let gen = dev.gen;
        let path = CString::new(format!("/dev/{RTB_DISK_PREFIX}{index}")).unwrap_or_default();
        // SAFETY: a NUL-terminated path; the descriptor is tracked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        self.count("open disk", sys_outcome(fd >= 0));
        if fd >= 0 {
            self.disk_fds.push(DiskFd { fd, gen });
        }
    }

    // ---- Phases -----------------------------------------------------------

    /// Unprivileged: the control device cannot be opened, and every
    /// request that needs CAP_SYS_ADMIN is refused however it is made.
    fn unprivileged_checks(&mut self) {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            let name = self.control_path.clone();
            let path = CString::new(name.clone()).unwrap_or_default();
            for flags in [libc::O_RDWR, libc::O_RDONLY, libc::O_WRONLY] {
                // SAFETY: a NUL-terminated path; a descriptor is closed.
                let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
                let e = errno();
                if fd >= 0 {
                    self.fail(format!("uid {uid} opened {name} (flags {flags:#x})"));
                    close(fd);
                } else if e != libc::EACCES {
                    self.fail(format!(
                        "open of {name} as uid {uid}: {}, want EACCES",
                        errno_name(e)
                    ));
                }
            }
        }
        let Some(fd) = self.control else {
            return;
        };
        for k in KNOWN.iter().filter(|k| k.admin) {
            for place in [Place::Rw, Place::Null, Place::Straddle, Place::Ro] {
                let bytes = self.gen_struct(k, None);
                self.call(Call {
                    fd,
                    kind: Kind::Control,
                    cmd: k.cmd,
                    bytes,
                    place,
                    addr: 0,
                });
            }
        }
    }

    /// Closes and unmaps everything, detaches every device of ours.
    fn cleanup(&mut self) {
        while !self.maps.is_empty() {
            self.unmap(0);
        }
        for r in std::mem::take(&mut self.rings) {
            close(r.fd);
        }
        for f in std::mem::take(&mut self.disk_fds) {
            close(f.fd);
        }
        let Some(fd) = self.control else {
            return;
        };
        let indexes: Vec<u32> = self.devs.keys().copied().collect();
        for index in indexes {
            let mut d = RtbDetach::ZERO;
            d.abi_version = RTB_ABI_VERSION;
            d.index = index;
            // udev may still have the new disk open for a moment.
            let start = Instant::now();
            let r = loop {
                // SAFETY: a detach only reads `d`, ours.
                let r = unsafe { ioctl_ret(fd, RTB_IOC_DETACH, (&raw mut d).cast()) };
                if r != Err(libc::EBUSY) || start.elapsed() > Duration::from_secs(10) {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if r.is_ok() {
                if let Some(dev) = self.devs.remove(&index) {
                    self.detached_gens.insert(dev.gen);
                }
            } else {
                self.fail(format!(
                    "final detach of rtbackup{index}: {}",
                    result_name(r)
                ));
            }
        }
    }
}

fn main() {
    let args = parse_args();
    let has_cap = has_cap_sys_admin();
    if args.expect_unprivileged && has_cap {
        eprintln!("rtb-ioctl-fuzz: --expect-unprivileged, but this process has CAP_SYS_ADMIN");
        std::process::exit(1);
    }
    let privileged = has_cap;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    println!(
        "[rtb-ioctl-fuzz] seed {} (rerun with --seed {}), {} calls, {}, disks: {:?}",
        args.seed,
        args.seed,
        args.calls,
        if privileged {
            "with CAP_SYS_ADMIN"
        } else {
            "unprivileged"
        },
        args.disks
    );
    let mut control = args.control_fd;
    if control.is_none() && (privileged || euid == 0) {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&args.control)
        {
            Ok(f) => control = Some(std::os::fd::IntoRawFd::into_raw_fd(f)),
            Err(e) if privileged => {
                eprintln!("rtb-ioctl-fuzz: open {}: {e}", args.control);
                std::process::exit(1);
            }
            Err(_) => {}
        }
    }
    if let Some(fd) = control {
        let mut v = RtbVersion::ZERO;
        // SAFETY: the kernel writes `v`, ours, if `fd` is the control
        // device, and nothing if it is something else.
        let r = unsafe { ioctl_ret(fd, RTB_IOC_VERSION, (&raw mut v).cast()) };
        // Without CAP_SYS_ADMIN even VERSION is refused, with EPERM: any
        // other answer is from something else than the control device.
        let (as_expected, want) = if privileged {
            (r.is_ok(), "success")
        } else {
            (r == Err(libc::EPERM), "EPERM")
        };
        if !as_expected {
            eprintln!(
                "rtb-ioctl-fuzz: control fd {fd}: RTB_IOC_VERSION answered {}, want {want} (not {}?)",
                result_name(r),
                args.control
            );
            std::process::exit(1);
        }
    }

    let mut f = Fuzzer {
        rng: Rng(args.seed),
        s: Scratch::new(),
        control,
        control_path: args.control.clone(),
        privileged,
        verbose: args.verbose,
        disks: args.disks.clone(),
        calls: args.calls.max(1),
        done: 0,
        max_attaches: args.max_attaches,
        foreign: BTreeSet::new(),
        devs: BTreeMap::new(),
        detached_gens: BTreeSet::new(),
        next_gen: 0,
        attaches: 0,
        rings: Vec::new(),
        maps: Vec::new(),
        disk_fds: Vec::new(),
        stats: BTreeMap::new(),
        failures: Vec::new(),
        list_buf: vec![RtbDeviceInfo::ZERO; RTB_MAX_DEVICES as usize],
    };
    let before = f.snapshot();
    if let Some(s) = &before {
        f.foreign = s.keys().copied().collect();
    }
    let nodes_before = disk_nodes();
    let refs_before = module_refs();
    println!(
        "[rtb-ioctl-fuzz] before: {} device(s) attached{}, module references {}",
        f.foreign.len(),
        if before.is_some() {
            ""
        } else {
            " (not listed: no control fd or no CAP_SYS_ADMIN)"
        },
        refs_before.as_deref().unwrap_or("unknown")
    );

    if !privileged {
        f.unprivileged_checks();
    }
    let start = Instant::now();
    // A bug of this program must not leave devices behind: clean up anyway.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for i in 0..args.calls {
            f.done = i;
            if f.rng.one_in(5) {
                f.other_step();
            } else {
                f.ioctl_step();
            }
            if (i + 1) % 1000 == 0 {
                println!(
                    "[rtb-ioctl-fuzz] {} calls, {:.1} s: {} device(s) of ours attached \
                 ({} attaches), {} ring fd(s), {} mapping(s), {} failure(s)",
                    i + 1,
                    start.elapsed().as_secs_f64(),
                    f.devs.len(),
                    f.attaches,
                    f.rings.len(),
                    f.maps.len(),
                    f.failures.len()
                );
            }
        }
    }));
    if run.is_err() {
        let at = f.done;
        f.fail(format!("the fuzzer panicked at call {at}"));
    }
    f.cleanup();

    // The end state: as before.
    if let (Some(before), Some(after)) = (before, f.snapshot()) {
        let (a, b) = (idents(&before), idents(&after));
        if a != b {
            f.fail(format!(
                "the device table is not as before: {a:?} then, {b:?} now"
            ));
        }
    }
    if !f.devs.is_empty() {
        let left: Vec<u32> = f.devs.keys().copied().collect();
        f.fail(format!("devices attached by this run are left: {left:?}"));
    }
    let mut nodes_after = disk_nodes();
    if !settles(|| {
        nodes_after = disk_nodes();
        nodes_after == nodes_before
    }) {
        f.fail(format!(
            "stacked disk nodes: {nodes_before:?} before, {nodes_after:?} after"
        ));
    }
    let mut refs_after = module_refs();
    if !settles(|| {
        refs_after = module_refs();
        refs_after == refs_before
    }) {
        f.fail(format!(
            "module references: {} before, {} after (leaked)",
            refs_before.as_deref().unwrap_or("?"),
            refs_after.as_deref().unwrap_or("?")
        ));
    }

    println!("[rtb-ioctl-fuzz] results (operation: result x count):");
    let mut by_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((op, res), n) in &f.stats {
        by_op.entry(op).or_default().push(format!("{res} x{n}"));
    }
    for (op, results) in by_op {
        println!("  {op}: {}", results.join(", "));
    }
    println!(
        "[rtb-ioctl-fuzz] seed {}: {} calls in {:.1} s, {} attach(es) made",
        args.seed,
        args.calls,
        start.elapsed().as_secs_f64(),
        f.attaches
    );
    if !f.failures.is_empty() {
        println!(
            "[rtb-ioctl-fuzz] {} failure(s), the first:",
            f.failures.len()
        );
        for m in f.failures.iter().take(20) {
            println!("  {m}");
        }
        std::process::exit(1);
    }
    println!("[rtb-ioctl-fuzz] all checks held");
}
