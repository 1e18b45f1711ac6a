//! Sends malformed requests to /dev/rtbackup-control (and, when a device is
//! attached, to its ring file) and checks that each is refused with the
//! documented errno and leaves the device table unchanged.
//!
//! Usage: rtb-ioctl-garbage [CONTROL_PATH]. Exit status 0 when every case
//! behaves, 1 otherwise. Run as root inside the test VM.

use rtbackup_abi::*;
use rtbackup_testkit::{ioc, ioctl_ret, list, IOC_READ, IOC_WRITE};
use std::ffi::c_void;
use std::os::fd::AsRawFd;

/// Issues an ioctl and returns 0 or the errno.
fn raw(fd: i32, cmd: u32, arg: *mut c_void) -> i32 {
    // SAFETY: the kernel validates every argument; bad pointers are the
    // point of this test and make it fail with EFAULT, not crash us.
    unsafe { ioctl_ret(fd, cmd, arg) }.map_or_else(|e| e, |_| 0)
}

/// Issues an ioctl that returns a file descriptor: the fd, or minus errno.
fn raw_fd(fd: i32, cmd: u32, arg: *mut c_void) -> i32 {
    // SAFETY: as in `raw`.
    unsafe { ioctl_ret(fd, cmd, arg) }.unwrap_or_else(|e| -e)
}

/// Maps `len` bytes of `fd` at `offset` shared and unmaps them again:
/// 0 or the errno of mmap.
fn map(fd: i32, len: usize, prot: i32, offset: i64) -> i32 {
    // SAFETY: a fresh mapping chosen by the kernel; nothing else uses it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    }
    // SAFETY: `p` was mapped above with length `len`.
    unsafe { libc::munmap(p, len) };
    0
}

/// The attached devices' entries.
fn infos(fd: i32) -> Vec<RtbDeviceInfo> {
    list(fd).unwrap_or_else(|e| panic!("RTB_IOC_LIST failed: errno {e}"))
}

/// The ring's `head_seq` of device `index`.
fn head_seq(fd: i32, index: u32) -> u64 {
    infos(fd)
        .iter()
        .find(|i| i.index == index)
        .map_or(0, |i| i.ring.head_seq)
}

/// (index, lower path, state) of every attached device.
fn table(fd: i32) -> Vec<(u32, Vec<u8>, u32)> {
    infos(fd)
        .iter()
        .map(|i| {
            (
                i.index,
                c_str_bytes(&i.lower_path).unwrap_or(&[]).to_vec(),
                i.state,
            )
        })
        .collect()
}

fn attach_req(path: &[u8]) -> RtbAttach {
    let mut a = RtbAttach::ZERO;
    a.abi_version = RTB_ABI_VERSION;
    a.lower_path[..path.len()].copy_from_slice(path);
    a
}

fn mark_req(index: u32, name: &[u8]) -> RtbMark {
    let mut m = RtbMark::ZERO;
    m.abi_version = RTB_ABI_VERSION;
    m.index = index;
    m.name_len = name.len() as u32;
    m.name[..name.len()].copy_from_slice(name);
    m
}

/// A small xorshift generator: reproducible garbage without dependencies.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A mark request with random fields, biased towards plausible ones
    /// so that each check of the module is reached.
    fn mark(&mut self, attached: Option<u32>) -> RtbMark {
        let mut m = RtbMark::ZERO;
        let r = self.next();
        m.abi_version = if r & 3 == 0 {
            r as u32
        } else {
            RTB_ABI_VERSION
        };
        m.index = match (r >> 2) & 3 {
            0 => self.next() as u32,
            1 => attached.unwrap_or(RTB_MAX_DEVICES - 1),
            _ => RTB_MAX_DEVICES - 1,
        };
        const CHARS: &[u8] = b"abc.-_XYZ09@: /\0\xff";
        m.flags = if (r >> 4) & 7 == 0 {
            self.next() as u32
        } else {
            0
        };
        m.name_len = match (r >> 7) & 3 {
            0 => self.next() as u32,
            _ => (self.next() % (RTB_MARK_NAME_MAX as u64 + 2)) as u32,
        };
        for b in m.name.iter_mut() {
            *b = if (r >> 9) & 1 == 0 {
                self.next() as u8
            } else {
                CHARS[(self.next() % CHARS.len() as u64) as usize]
            };
        }
        if (r >> 10) & 7 == 0 {
            m.seq = self.next();
        }
        if (r >> 13) & 7 == 0 {
            m.reserved[(self.next() % 4) as usize] = self.next() | 1;
        }
        m
    }
}

/// The errno the module must answer `m` with (0: recorded), `attached`
/// being the one attached device, if any, and `tracking` whether its ring
/// tracks writes (a new attach does until an initial sync: marks are then
/// refused with EBUSY).
fn mark_errno(m: &RtbMark, attached: Option<u32>, tracking: bool) -> i32 {
    if m.abi_version != RTB_ABI_VERSION {
        return libc::EPROTO;
    }
    if m.flags != 0 || m.seq != 0 || m.reserved.iter().any(|&r| r != 0) {
        return libc::EINVAL;
    }
    let name_ok = matches!(m.name_bytes(), Some(n) if check_mark_name(n).is_ok());
    if !name_ok {
        return libc::EINVAL;
    }
    if Some(m.index) != attached {
        return libc::ENXIO;
    }
    if tracking {
        return libc::EBUSY;
    }
    0
}

/// Whether the ring of device `index` tracks writes instead of recording.
fn tracking(fd: i32, index: u32) -> bool {
    infos(fd)
        .iter()
        .find(|d| d.index == index)
        .is_some_and(|d| d.ring.flags & u64::from(RTB_RING_F_TRACKING) != 0)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/dev/rtbackup-control".into());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let fd = file.as_raw_fd();
    let before = table(fd);
    let mut failures = 0;
    let mut check = |name: &str, got: i32, want: i32| {
        let after = table(fd);
        let ok = got == want && after == before;
        println!(
            "{} {name}: errno {got} (want {want}){}",
            if ok { "PASS" } else { "FAIL" },
            if after == before {
                ""
            } else {
                ", device table changed"
            }
        );
        if !ok {
            failures += 1;
        }
    };
    let bad_ptr = 0xdead_0000_0000usize as *mut c_void;

    check(
        "unknown ioctl number",
        raw(fd, ioc(IOC_READ, 0x7f, 8), bad_ptr),
        libc::ENOTTY,
    );
    check(
        "attach with a mis-sized structure",
        raw(fd, ioc(IOC_READ | IOC_WRITE, 1, 100), bad_ptr),
        libc::ENOTTY,
    );
    check(
        "version to a NULL pointer",
        raw(fd, RTB_IOC_VERSION, std::ptr::null_mut()),
        libc::EFAULT,
    );
    check(
        "attach from a NULL pointer",
        raw(fd, RTB_IOC_ATTACH, std::ptr::null_mut()),
        libc::EFAULT,
    );
    check(
        "attach from an unmapped pointer",
        raw(fd, RTB_IOC_ATTACH, bad_ptr),
        libc::EFAULT,
    );

    let mut a = attach_req(b"/dev/null");
    a.abi_version = 999;
    check(
        "attach, unknown ABI version",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EPROTO,
    );
    let mut a = attach_req(b"");
    a.lower_path = [b'A'; RTB_PATH_MAX];
    check(
        "attach, unterminated path",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EINVAL,
    );
    let mut a = attach_req(b"");
    check(
        "attach, empty path",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EINVAL,
    );
    let mut a = attach_req(b"/dev/null");
    a.flags = 0xffff_ffff;
    check(
        "attach, unknown flags",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EINVAL,
    );
    let mut a = attach_req(b"/dev/null");
    a.block_timeout_ms = RTB_BLOCK_TIMEOUT_MAX_MS + 1;
    check(
        "attach, block timeout over a week",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EINVAL,
    );
    let mut a = attach_req(b"/dev/null");
    a.reserved[4] = u64::MAX;
    check(
        "attach, reserved field set",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EINVAL,
    );
    for (chunk, why) in [
        (1000, "not a power of two"),
        (2048, "below the minimum"),
        (32 << 20, "above the maximum"),
        (u64::MAX, "huge"),
    ] {
        let mut a = attach_req(b"/dev/null");
        a.chunk_size = chunk;
        check(
            &format!("attach, chunk size {why}"),
            raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
            libc::EINVAL,
        );
    }
    let mut a = attach_req(b"/nonexistent/disk");
    check(
        "attach, path does not exist",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::ENOENT,
    );
    let mut a = attach_req(b"/proc/self/status");
    check(
        "attach, regular file",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::ENOTBLK,
    );

    let mut d = RtbDetach::ZERO;
    d.abi_version = RTB_ABI_VERSION;
    d.index = u32::MAX;
    check(
        "detach, huge index",
        raw(fd, RTB_IOC_DETACH, (&raw mut d).cast()),
        libc::ENXIO,
    );
    d.index = RTB_MAX_DEVICES - 1;
    check(
        "detach, index not attached",
        raw(fd, RTB_IOC_DETACH, (&raw mut d).cast()),
        libc::ENXIO,
    );
    d.index = 0;
    d.abi_version = 0;
    check(
        "detach, ABI version 0",
        raw(fd, RTB_IOC_DETACH, (&raw mut d).cast()),
        libc::EPROTO,
    );
    d.abi_version = RTB_ABI_VERSION;
    d.reserved[0] = 1;
    check(
        "detach, reserved field set",
        raw(fd, RTB_IOC_DETACH, (&raw mut d).cast()),
        libc::EINVAL,
    );

    let mut l = RtbList::ZERO;
    l.abi_version = RTB_ABI_VERSION;
    l.capacity = u32::MAX;
    check(
        "list, huge capacity",
        raw(fd, RTB_IOC_LIST, (&raw mut l).cast()),
        libc::EINVAL,
    );
    let mut l = RtbList::ZERO;
    l.abi_version = RTB_ABI_VERSION;
    l.capacity = RTB_MAX_DEVICES;
    l.devices = bad_ptr as u64;
    let want = if before.is_empty() { 0 } else { libc::EFAULT };
    check(
        "list into an unmapped array",
        raw(fd, RTB_IOC_LIST, (&raw mut l).cast()),
        want,
    );
    let mut l = RtbList::ZERO;
    l.abi_version = RTB_ABI_VERSION + 1;
    check(
        "list, unknown ABI version",
        raw(fd, RTB_IOC_LIST, (&raw mut l).cast()),
        libc::EPROTO,
    );

    for (name, size) in [
        ("attach, ring size not a power of two", 3 << 20),
        ("attach, ring size below the minimum", RTB_RING_MIN_SIZE / 2),
        ("attach, ring size above the maximum", RTB_RING_MAX_SIZE * 2),
    ] {
        let mut a = attach_req(b"/dev/null");
        a.ring_size = size;
        check(
            name,
            raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
            libc::EINVAL,
        );
    }

    let mut o = RtbRingOpen::ZERO;
    o.abi_version = RTB_ABI_VERSION;
    o.index = RTB_MAX_DEVICES - 1;
    check(
        "ring open, index not attached",
        raw(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast()),
        libc::ENXIO,
    );
    o.index = u32::MAX;
    check(
        "ring open, huge index",
        raw(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast()),
        libc::ENXIO,
    );
    o.index = 0;
    o.reserved[3] = 1;
    check(
        "ring open, reserved field set",
        raw(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast()),
        libc::EINVAL,
    );
    o.reserved[3] = 0;
    o.abi_version = 1;
    check(
        "ring open, ABI version 1",
        raw(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast()),
        libc::EPROTO,
    );
    check(
        "ring open from an unmapped address",
        raw(fd, RTB_IOC_RING_OPEN, bad_ptr),
        libc::EFAULT,
    );

    // Marks: every malformed request is refused before anything is
    // recorded, whatever the device.
    let not_attached = RTB_MAX_DEVICES - 1;
    let attached = before.first().map(|d| d.0);
    let target = attached.unwrap_or(not_attached);
    let seq_before = attached.map(|i| head_seq(fd, i));
    let is_tracking = attached.is_some_and(|i| tracking(fd, i));
    check(
        "mark, mis-sized structure",
        raw(fd, ioc(IOC_READ | IOC_WRITE, 5, 112), bad_ptr),
        libc::ENOTTY,
    );
    check(
        "mark from an unmapped address",
        raw(fd, RTB_IOC_MARK, bad_ptr),
        libc::EFAULT,
    );
    let mut m = mark_req(not_attached, b"m1");
    check(
        "mark, index not attached",
        raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
        libc::ENXIO,
    );
    let mut m = mark_req(u32::MAX, b"m1");
    check(
        "mark, huge index",
        raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
        libc::ENXIO,
    );
    let mut m = mark_req(target, b"m1");
    m.abi_version = 2;
    check(
        "mark, ABI version 2",
        raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
        libc::EPROTO,
    );
    let mut m = mark_req(target, b"m1");
    m.flags = 1;
    check(
        "mark, unknown flags",
        raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
        libc::EINVAL,
    );
    let mut m = mark_req(target, b"m1");
    m.reserved[3] = 1;
    check(
        "mark, reserved field set",
        raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
        libc::EINVAL,
    );
    let mut m = mark_req(target, b"m1");
    m.seq = 7;
    check(
        "mark, seq set on input",
        raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
        libc::EINVAL,
    );
    for (name, bytes, len) in [
        ("mark, empty name", &b""[..], None),
        ("mark, name_len 65", &[b'x'; 64][..], Some(65)),
        ("mark, name_len u32::MAX", &b"m1"[..], Some(u32::MAX)),
        ("mark, name starting with a dot", b".m1", None),
        ("mark, name with '@'", b"vol@m1", None),
        ("mark, name with ':'", b"mark:m1", None),
        ("mark, name with a NUL", b"m\x001", None),
        ("mark, name with a space", b"m 1", None),
        ("mark, name with a byte above 127", b"m\xe91", None),
    ] {
        let mut m = mark_req(target, bytes);
        if let Some(len) = len {
            m.name_len = len;
        }
        check(
            name,
            raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
            libc::EINVAL,
        );
    }
    let mut rng = Garbage(0x9e37_79b9_7f4a_7c15);
    let (mut wrong, mut recorded) = (0, 0);
    for _ in 0..2000 {
        let mut m = rng.mark(attached);
        let want = mark_errno(&m, attached, is_tracking);
        let e = raw(fd, RTB_IOC_MARK, (&raw mut m).cast());
        if e != want || (e == 0 && m.seq == 0) {
            if wrong < 5 {
                println!("mark of {m:?}: errno {e}, want {want}");
            }
            wrong += 1;
        }
        recorded += u64::from(e == 0);
    }
    check("2000 random mark requests get the right errno", wrong, 0);
    println!("({recorded} of them were valid marks and recorded)");
    if let (Some(index), Some(seq)) = (attached, seq_before) {
        let seq = seq + recorded;
        check(
            "no malformed mark was recorded",
            i32::from(head_seq(fd, index) != seq),
            0,
        );
        // An answer that cannot be written: refused before the mark exists.
        // SAFETY: a fresh anonymous page; made read-only after the request
        // is written to it, then unmapped.
        unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            page.cast::<RtbMark>().write(mark_req(index, b"m1"));
            libc::mprotect(page, 4096, libc::PROT_READ);
            check(
                "mark into a read-only request",
                raw(fd, RTB_IOC_MARK, page),
                libc::EFAULT,
            );
            libc::munmap(page, 4096);
        }
        check(
            "a refused answer recorded nothing",
            i32::from(head_seq(fd, index) != seq),
            0,
        );
        let mut m = mark_req(index, b"garbage-test.1");
        if is_tracking {
            check(
                "valid mark of a tracking device",
                raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
                libc::EBUSY,
            );
        } else {
            check(
                "valid mark of an attached device",
                raw(fd, RTB_IOC_MARK, (&raw mut m).cast()),
                0,
            );
            check(
                "the mark got the next seq",
                i32::from(m.seq != seq || head_seq(fd, index) != seq + 1),
                0,
            );
        }
    }

    // RTB_IOC_DIRTY: every malformed request is refused before anything
    // changes.
    let geometry = attached.and_then(|i| infos(fd).into_iter().find(|d| d.index == i));
    let chunks = geometry.as_ref().map_or(2048, |d| {
        (d.capacity_sectors * 512).div_ceil(d.ring.chunk_size.max(1))
    });
    let mut words = vec![0u64; chunks.div_ceil(64) as usize];
    let dirty_req = |words: &mut Vec<u64>| {
        let mut d = RtbDirty::ZERO;
        d.abi_version = RTB_ABI_VERSION;
        d.index = target;
        d.bitmap = words.as_mut_ptr() as u64;
        d.bitmap_bytes = (words.len() * 8) as u64;
        d
    };
    check(
        "dirty from an unmapped address",
        raw(fd, RTB_IOC_DIRTY, bad_ptr),
        libc::EFAULT,
    );
    let mut d = dirty_req(&mut words);
    d.abi_version = 3;
    check(
        "dirty, ABI version 3",
        raw(fd, RTB_IOC_DIRTY, (&raw mut d).cast()),
        libc::EPROTO,
    );
    let mut d = dirty_req(&mut words);
    d.index = not_attached;
    check(
        "dirty, index not attached",
        raw(fd, RTB_IOC_DIRTY, (&raw mut d).cast()),
        libc::ENXIO,
    );
    for (what, change) in [
        ("unknown flags", 0usize),
        ("padding set", 1),
        ("reserved field set", 2),
        ("output field set", 3),
    ] {
        let mut d = dirty_req(&mut words);
        match change {
            0 => d.flags = 1,
            1 => d.pad = 1,
            2 => d.reserved[2] = 1,
            _ => d.count = 5,
        }
        check(
            &format!("dirty, {what}"),
            raw(fd, RTB_IOC_DIRTY, (&raw mut d).cast()),
            libc::EINVAL,
        );
    }
    if attached.is_some() {
        let mut d = dirty_req(&mut words);
        d.bitmap_bytes += 8;
        check(
            "dirty, bitmap of the wrong size",
            raw(fd, RTB_IOC_DIRTY, (&raw mut d).cast()),
            libc::EINVAL,
        );
        let mut d = dirty_req(&mut words);
        d.bitmap = bad_ptr as u64;
        check(
            "dirty, bitmap at an unmapped address",
            raw(fd, RTB_IOC_DIRTY, (&raw mut d).cast()),
            libc::EFAULT,
        );
        if !chunks.is_multiple_of(64) {
            if let Some(w) = words.last_mut() {
                *w = u64::MAX;
            }
            let mut d = dirty_req(&mut words);
            check(
                "dirty, a bit past the last chunk",
                raw(fd, RTB_IOC_DIRTY, (&raw mut d).cast()),
                libc::EINVAL,
            );
            words.iter_mut().for_each(|w| *w = 0);
        }
    }

    // RTB_IOC_SET: every malformed request is refused and changes nothing.
    let set_req = || {
        let mut q = RtbSet::ZERO;
        q.abi_version = RTB_ABI_VERSION;
        q.index = target;
        q.flags = RTB_SET_ON_FULL | RTB_SET_BLOCK_TIMEOUT;
        q.on_full = RTB_ON_FULL_BLOCK;
        q.block_timeout_ms = 30_000;
        q
    };
    let policy = |fd| {
        infos(fd)
            .into_iter()
            .find(|d| d.index == target)
            .map(|d| (d.ring.on_full, d.ring.block_timeout_ms))
    };
    let policy_before = policy(fd);
    check(
        "set from an unmapped address",
        raw(fd, RTB_IOC_SET, bad_ptr),
        libc::EFAULT,
    );
    let mut q = set_req();
    q.abi_version = 5;
    check(
        "set, ABI version 5",
        raw(fd, RTB_IOC_SET, (&raw mut q).cast()),
        libc::EPROTO,
    );
    let mut q = set_req();
    q.index = not_attached;
    check(
        "set, index not attached",
        raw(fd, RTB_IOC_SET, (&raw mut q).cast()),
        libc::ENXIO,
    );
    for (what, change) in [
        ("no flags", 0usize),
        ("unknown flags", 1),
        ("padding set", 2),
        ("reserved field set", 3),
        ("on_full neither block nor track", 4),
        ("block timeout over a week", 5),
        ("on_full given but not selected", 6),
        ("block timeout given but not selected", 7),
    ] {
        let mut q = set_req();
        match change {
            0 => q.flags = 0,
            1 => q.flags |= 1 << 7,
            2 => q.pad = 1,
            3 => q.reserved[3] = 1,
            4 => q.on_full = 2,
            5 => q.block_timeout_ms = RTB_BLOCK_TIMEOUT_MAX_MS + 1,
            6 => {
                q.flags = RTB_SET_BLOCK_TIMEOUT;
                q.on_full = RTB_ON_FULL_TRACK;
            }
            _ => q.flags = RTB_SET_ON_FULL,
        }
        check(
            &format!("set, {what}"),
            raw(fd, RTB_IOC_SET, (&raw mut q).cast()),
            libc::EINVAL,
        );
    }
    let policy_after = policy(fd);
    check(
        "refused sets left the policy as it was",
        i32::from(policy_after != policy_before),
        0,
    );

    // With a device attached: its ring file refuses everything but a valid
    // acknowledgement, and a second agent.
    if let Some((index, _, _)) = before.first() {
        let mut o = RtbRingOpen::ZERO;
        o.abi_version = RTB_ABI_VERSION;
        o.index = *index;
        let ring = raw_fd(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast());
        check("ring open of an attached device", ring.min(0), 0);
        if ring >= 0 {
            check(
                "second ring open of the same device",
                raw(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast()),
                libc::EBUSY,
            );
            let mut k = RtbRingAck::ZERO;
            k.abi_version = RTB_ABI_VERSION;
            k.tail = u64::MAX;
            check(
                "ack beyond the head",
                raw(ring, RTB_RING_IOC_ACK, (&raw mut k).cast()),
                libc::EINVAL,
            );
            k.tail = 0;
            k.flags = 0x80;
            check(
                "ack with an unknown flag",
                raw(ring, RTB_RING_IOC_ACK, (&raw mut k).cast()),
                libc::EINVAL,
            );
            k.flags = 0;
            k.abi_version = 99;
            check(
                "ack with ABI version 99",
                raw(ring, RTB_RING_IOC_ACK, (&raw mut k).cast()),
                libc::EPROTO,
            );
            check(
                "ack from an unmapped address",
                raw(ring, RTB_RING_IOC_ACK, bad_ptr),
                libc::EFAULT,
            );
            // RTB_RING_IOC_RESYNC garbage.
            let mut words = vec![0u64; chunks.div_ceil(64) as usize];
            let fetch = |words: &mut Vec<u64>| {
                let mut r = RtbResync::ZERO;
                r.abi_version = RTB_ABI_VERSION;
                r.op = RTB_RESYNC_FETCH;
                r.bitmap = words.as_mut_ptr() as u64;
                r.bitmap_bytes = (words.len() * 8) as u64;
                r
            };
            let seq = head_seq(fd, *index);
            let mut r = fetch(&mut words);
            r.abi_version = 3;
            check(
                "resync, ABI version 3",
                raw(ring, RTB_RING_IOC_RESYNC, (&raw mut r).cast()),
                libc::EPROTO,
            );
            check(
                "resync from an unmapped address",
                raw(ring, RTB_RING_IOC_RESYNC, bad_ptr),
                libc::EFAULT,
            );
            for (what, change) in [
                ("op 0", 0usize),
                ("op 99", 1),
                ("unknown flags", 2),
                ("padding set", 3),
                ("reserved field set", 4),
                ("first_seq set on input", 5),
                ("bitmap too small", 6),
                ("track-all with a bitmap", 7),
                ("done with flags", 8),
            ] {
                let mut r = fetch(&mut words);
                match change {
                    0 => r.op = 0,
                    1 => r.op = 99,
                    2 => r.flags = 0x80,
                    3 => r.pad = 1,
                    4 => r.reserved[1] = 1,
                    5 => r.first_seq = 1,
                    6 => r.bitmap_bytes -= 8,
                    7 => r.op = RTB_RESYNC_TRACK_ALL,
                    _ => {
                        r.op = RTB_RESYNC_DONE;
                        r.flags = RTB_RESYNC_F_STREAM;
                    }
                }
                check(
                    &format!("resync, {what}"),
                    raw(ring, RTB_RING_IOC_RESYNC, (&raw mut r).cast()),
                    libc::EINVAL,
                );
            }
            let mut r = fetch(&mut words);
            r.bitmap = bad_ptr as u64;
            check(
                "resync fetch into an unmapped bitmap",
                raw(ring, RTB_RING_IOC_RESYNC, (&raw mut r).cast()),
                libc::EFAULT,
            );
            if tracking(fd, *index) {
                let mut r = RtbResync::ZERO;
                r.abi_version = RTB_ABI_VERSION;
                r.op = RTB_RESYNC_DONE;
                check(
                    "resync done while tracking",
                    raw(ring, RTB_RING_IOC_RESYNC, (&raw mut r).cast()),
                    libc::EBUSY,
                );
            }
            check(
                "refused resyncs reserved no seq",
                i32::from(head_seq(fd, *index) != seq),
                0,
            );
            check(
                "unknown ioctl on a ring",
                raw(ring, ioc(IOC_WRITE, 0x33, 48), bad_ptr),
                libc::ENOTTY,
            );
            check(
                "control ioctl on a ring",
                raw(ring, RTB_IOC_LIST, bad_ptr),
                libc::ENOTTY,
            );
            check(
                "writable mapping of a ring",
                map(ring, 4096, libc::PROT_READ | libc::PROT_WRITE, 0),
                libc::EACCES,
            );
            check(
                "mapping beyond the ring",
                map(ring, 1 << 40, libc::PROT_READ, 0),
                libc::EINVAL,
            );
            check(
                "mapping at an offset",
                map(ring, 4096, libc::PROT_READ, 4096),
                libc::EINVAL,
            );
            check(
                "read-only mapping of the control page",
                map(ring, 4096, libc::PROT_READ, 0),
                0,
            );
            // SAFETY: `ring` is a file descriptor we own.
            unsafe { libc::close(ring) };
            o.abi_version = RTB_ABI_VERSION;
            let again = raw_fd(fd, RTB_IOC_RING_OPEN, (&raw mut o).cast());
            check("ring open after the agent closed it", again.min(0), 0);
            if again >= 0 {
                // SAFETY: as above.
                unsafe { libc::close(again) };
            }
        }
    }

    if failures > 0 {
        println!("{failures} case(s) failed");
        std::process::exit(1);
    }
    println!("all cases passed");
}
