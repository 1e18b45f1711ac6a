//! The fuzz target of this crate (`nbd`: tools/fuzz) on its checked-in
//! inputs, so that `cargo test` runs it without cargo-fuzz: the seed corpus
//! (generated here from valid client sessions) and the inputs that once
//! broke something (`tools/fuzz/regressions/nbd/`).

use std::path::Path;

use rtbackup_nbd::fuzz::nbd_target;
use rtbackup_nbd::proto::*;
use rtbackup_proto::fuzz::check_target;

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn info(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut b = (name.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        b.extend_from_slice(&i.to_be_bytes());
    }
    b
}

fn req(command: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    if command == CMD_WRITE {
        b.resize(b.len() + length as usize, 0x5a);
    }
    b
}

/// Mode byte: export of 1 MiB (2), block size 512 (1 << 2), reads of at
/// most `max_read` bytes.
fn mode(max_read: u8) -> u8 {
    2 | 1 << 2 | max_read << 4
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let flags = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes();
    let transmission = [
        req(CMD_READ, 1, 0, 4096),
        req(CMD_READ, 2, 3, 512),
        req(CMD_CACHE, 3, 4096, 4096),
        req(CMD_FLUSH, 4, 0, 0),
        req(CMD_WRITE, 5, 0, 512),
        req(CMD_TRIM, 6, 0, 512),
        req(CMD_WRITE_ZEROES, 7, 0, 512),
        req(99, 8, 0, 0),
        req(CMD_READ, 9, (1 << 20) - 512, 1024),
        req(CMD_DISC, 10, 0, 0),
    ]
    .concat();
    let go = [
        &flags[..],
        &opt(OPT_LIST, &[]),
        &opt(OPT_INFO, &info("a", &[INFO_DESCRIPTION, INFO_BLOCK_SIZE])),
        &opt(OPT_GO, &info("b@2026-11-26T05:00:00Z", &[])),
        &transmission,
    ]
    .concat();
    let export_name = [
        &FLAG_C_FIXED_NEWSTYLE.to_be_bytes()[..],
        &opt(OPT_EXPORT_NAME, b"a"),
        &req(CMD_READ, 1, 512, 512),
    ]
    .concat();
    let refused = [
        &flags[..],
        &opt(OPT_STARTTLS, &[]),
        &opt(42, b"?"),
        &opt(OPT_LIST, b"x"),
        &opt(OPT_GO, &info("zz", &[])),
        &opt(OPT_INFO, &[0, 0, 0, 9]),
        &opt(OPT_ABORT, &[]),
    ]
    .concat();
    vec![
        ("go", [&[mode(0), 0][..], &go].concat()),
        ("go-dribble", [&[mode(3), 0][..], &go].concat()),
        ("go-write-fails", [&[mode(0), 4][..], &go].concat()),
        ("export-name", [&[mode(0), 0][..], &export_name].concat()),
        ("refused", [&[mode(0), 0][..], &refused].concat()),
    ]
}

#[test]
fn nbd_inputs() {
    let tools = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    check_target(tools, "nbd", &seeds(), nbd_target);
}
