//! Why is a block device busy? Answers from /proc/self/mountinfo and sysfs,
//! for error messages only (the kernel's EBUSY is what decides).

use std::fs;
use std::path::Path;

/// `major:minor` of a device number.
pub(crate) fn devt_string(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

/// Mount points of the device `devt` ("M:m"), from mountinfo text.
fn mounts_of(mountinfo: &str, devt: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let dev = f.nth(2)?;
            let mnt = f.nth(1)?;
            (dev == devt).then(|| mnt.to_owned())
        })
        .collect()
}

/// Names of the partitions of the whole disk `devt`, with their `M:m`.
fn partitions_of(devt: &str) -> Vec<(String, String)> {
    let dir = Path::new("/sys/dev/block").join(devt);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .filter_map(|e| {
            let dev = fs::read_to_string(e.path().join("dev")).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                dev.trim().to_owned(),
            ))
        })
        .collect()
}

/// Kernel holders of `devt` (device-mapper, md, ...), from sysfs.
fn holders_of(devt: &str) -> Vec<String> {
    let dir = Path::new("/sys/dev/block").join(devt).join("holders");
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A human description of who holds `devt`, if one can be found.
pub(crate) fn user_of(devt: &str) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(m) = mounts_of(&mountinfo, devt).first() {
        return Some(format!("mounted at {m}"));
    }
    if let Some(h) = holders_of(devt).first() {
        return Some(format!("held by {h}"));
    }
    for (name, pdevt) in partitions_of(devt) {
        if let Some(m) = mounts_of(&mountinfo, &pdevt).first() {
            return Some(format!("partition {name} mounted at {m}"));
        }
        if let Some(h) = holders_of(&pdevt).first() {
            return Some(format!("partition {name} held by {h}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 8:16 / /srv rw,relatime shared:9 - xfs /dev/sdb rw
31 22 0:5 / /dev rw shared:2 - devtmpfs udev rw";

    #[test]
    fn finds_mount_points_by_devt() {
        assert_eq!(mounts_of(MOUNTINFO, "8:16"), vec!["/srv".to_owned()]);
        assert_eq!(mounts_of(MOUNTINFO, "254:1"), vec!["/".to_owned()]);
        assert!(mounts_of(MOUNTINFO, "8:0").is_empty());
        assert!(mounts_of("garbage\n\n1 2", "8:0").is_empty());
    }

    #[test]
    fn devt_formats_major_minor() {
        assert_eq!(devt_string(libc::makedev(259, 3)), "259:3");
    }
}
