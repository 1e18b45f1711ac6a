//! Entry point of the fuzz target `nbd` in `tools/fuzz`
//! (Documentation/testing.rst, "Fuzzing"), kept here so that `cargo test`
//! feeds it the inputs the fuzzer found (`tests/fuzz_regressions.rs`).
//! Not an API.

use std::io::{self, Read, Write};

use crate::serve::{serve, Export, Exports};

/// Export sizes the mode byte chooses from.
const SIZES: [u64; 4] = [0, 4096, 1 << 20, u64::MAX];
/// Block sizes the mode byte chooses from.
const BLOCK_SIZES: [u32; 4] = [0, 512, 4096, u32::MAX];

/// The client's side of the connection: reads come from the input, a few
/// bytes at a time at most if asked; writes are counted and dropped, and
/// fail once `write_budget` bytes are written (0: never).
struct Stream<'a> {
    input: &'a [u8],
    max_read: usize,
    written: u64,
    write_budget: u64,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = buf.len().min(self.input.len());
        if self.max_read > 0 {
            n = n.min(self.max_read);
        }
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.write_budget > 0 && self.written + buf.len() as u64 > self.write_budget {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An export whose reads return a byte that depends on their offset; reads
/// at offsets that are 3 modulo 7 fail.
struct FakeExport {
    size: u64,
    block_size: u32,
}

impl Export for FakeExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn description(&self) -> String {
        format!("fake export of {} bytes", self.size)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        // The contract of read_at: the bytes are inside the export.
        let end = offset.checked_add(buf.len() as u64);
        assert!(
            end.is_some_and(|e| e <= self.size),
            "read of {} bytes at {offset} outside an export of {} bytes",
            buf.len(),
            self.size
        );
        if offset % 7 == 3 {
            return Err("injected read error".into());
        }
        // A cheap fill: reads of up to 32 MiB are allowed.
        buf.fill((offset % 251) as u8);
        Ok(())
    }
}

/// Exports `a` and `b@2026-11-26T05:00:00Z`; opening any other name fails.
struct FakeExports {
    size: u64,
    block_size: u32,
}

impl Exports for FakeExports {
    fn list(&self) -> Vec<String> {
        vec!["a".into(), "b@2026-11-26T05:00:00Z".into()]
    }

    fn open(&self, name: &str) -> Result<Box<dyn Export>, String> {
        if !self.list().iter().any(|n| n == name) {
            return Err(format!("no export {name:?}"));
        }
        Ok(Box::new(FakeExport {
            size: self.size,
            block_size: self.block_size,
        }))
    }
}

/// Fuzz target `nbd`: a whole connection, from the greeting through the
/// option haggling to the transmission phase, with the input as what the
/// client sends. The first byte chooses the export size (bits 0-1), its
/// block size (bits 2-3) and the largest read the stream returns at once
/// (bits 4-7, 0: all); the second byte a write budget in 64-byte units
/// after which the client's end fails (0: none).
pub fn nbd_target(data: &[u8]) {
    let (mode, budget, input) = match data {
        [m, b, rest @ ..] => (*m, *b, rest),
        _ => (0, 0, &[][..]),
    };
    let exports = FakeExports {
        size: SIZES[usize::from(mode & 3)],
        block_size: BLOCK_SIZES[usize::from((mode >> 2) & 3)],
    };
    let stream = Stream {
        input,
        max_read: usize::from(mode >> 4),
        written: 0,
        write_budget: u64::from(budget) * 64,
    };
    let _ = serve(stream, &exports, "fuzz");
}
