//! Sends malformed requests to /dev/rtbackup-control (and, when a device is
//! attached, to its ring file) and checks that each is refused with the
//! documented errno and leaves the device table unchanged.
//!
//! Usage: rtb-ioctl-garbage [CONTROL_PATH]. Exit status 0 when every case
//! behaves, 1 otherwise. Run as root inside the test VM.

use rtbackup_abi::*;
use std::ffi::c_void;
use std::os::fd::AsRawFd;

const IOC_READ: u32 = 2;
const IOC_WRITE: u32 = 1;

fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (RTB_IOC_MAGIC << 8) | nr | (size << 16)
}

/// Issues an ioctl and returns 0 or the errno.
fn raw(fd: i32, cmd: u32, arg: *mut c_void) -> i32 {
    // SAFETY: the kernel validates every argument; bad pointers are the
    // point of this test and make it fail with EFAULT, not crash us.
    let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// Issues an ioctl that returns a file descriptor: the fd, or minus errno.
fn raw_fd(fd: i32, cmd: u32, arg: *mut c_void) -> i32 {
    // SAFETY: as in `raw`.
    let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if r < 0 {
        -std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
    } else {
        r
    }
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

/// (index, lower path) of every attached device.
fn table(fd: i32) -> Vec<(u32, Vec<u8>, u32)> {
    let mut infos = vec![RtbDeviceInfo::ZERO; RTB_MAX_DEVICES as usize];
    let mut req = RtbList::ZERO;
    req.abi_version = RTB_ABI_VERSION;
    req.capacity = RTB_MAX_DEVICES;
    req.devices = infos.as_mut_ptr() as u64;
    let e = raw(fd, RTB_IOC_LIST, (&raw mut req).cast());
    assert_eq!(e, 0, "RTB_IOC_LIST failed: errno {e}");
    infos[..req.count as usize]
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
    a.reserved[6] = u64::MAX;
    check(
        "attach, reserved field set",
        raw(fd, RTB_IOC_ATTACH, (&raw mut a).cast()),
        libc::EINVAL,
    );
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
