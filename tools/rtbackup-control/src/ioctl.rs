//! The raw ioctls, numbered by the shared ABI.

use rtbackup_abi::{
    RtbAttach, RtbDetach, RtbDirty, RtbList, RtbMark, RtbResync, RtbRingAck, RtbRingOpen, RtbSet,
    RtbVersion, RTB_IOC_ATTACH, RTB_IOC_DETACH, RTB_IOC_DIRTY, RTB_IOC_LIST, RTB_IOC_MARK,
    RTB_IOC_RING_OPEN, RTB_IOC_SET, RTB_IOC_VERSION, RTB_RING_IOC_ACK, RTB_RING_IOC_RESYNC,
};

nix::ioctl_read_bad!(version, RTB_IOC_VERSION, RtbVersion);
nix::ioctl_readwrite_bad!(attach, RTB_IOC_ATTACH, RtbAttach);
nix::ioctl_write_ptr_bad!(detach, RTB_IOC_DETACH, RtbDetach);
nix::ioctl_readwrite_bad!(list, RTB_IOC_LIST, RtbList);
nix::ioctl_write_ptr_bad!(ring_open, RTB_IOC_RING_OPEN, RtbRingOpen);
nix::ioctl_write_ptr_bad!(ring_ack, RTB_RING_IOC_ACK, RtbRingAck);
nix::ioctl_readwrite_bad!(mark, RTB_IOC_MARK, RtbMark);
nix::ioctl_readwrite_bad!(ring_resync, RTB_RING_IOC_RESYNC, RtbResync);
nix::ioctl_readwrite_bad!(dirty, RTB_IOC_DIRTY, RtbDirty);
nix::ioctl_write_ptr_bad!(set, RTB_IOC_SET, RtbSet);

// <linux/fs.h>: `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)`; the
// argument is ignored.
nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);
