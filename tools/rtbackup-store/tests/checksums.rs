//! Chunk checksums of a point (`PointReader::chunk_checksums`, what the
//! server's verify sends): every chunk hashed as of the point, in order,
//! the last one cut at the volume's end, in reads of bounded size; the
//! point stays fixed while the volume moves on.

mod common;

use common::*;
use rtbackup_proto::{chunk_checksum, ChunkChecksum};
use rtbackup_store::{PointReader, PointSpec, StoreError, VolumeOptions};

/// Every (first_chunk, count) call and the checksums, in order.
fn collect(r: &PointReader, chunk_size: u64) -> (Vec<(u64, usize)>, Vec<ChunkChecksum>) {
    let mut calls = Vec::new();
    let mut all = Vec::new();
    let n = r
        .chunk_checksums(chunk_size, |first, sums| {
            calls.push((first, sums.len()));
            all.extend_from_slice(sums);
            Ok::<_, StoreError>(())
        })
        .unwrap();
    assert_eq!(n, all.len() as u64);
    (calls, all)
}

fn expected(image: &[u8], chunk_size: u64) -> Vec<ChunkChecksum> {
    image
        .chunks(chunk_size as usize)
        .map(chunk_checksum)
        .collect()
}

#[test]
fn checksums_describe_the_point_and_stay_with_it() {
    let d = fast_tempdir();
    let store = store_with(d.path(), VolumeOptions::default());
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let mut m = Model::new();
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0xa1, 4096), 0));
    b.extend(m.push(write(17, 0xb2, 1024), 0));
    b.extend(m.push(Op::Flush, 0));
    b.extend(m.push(Op::Mark("m1".into()), 0));
    b.extend(m.push(write(100, 0xc3, 8192), 0));
    b.extend(m.push(Op::Flush, 0));
    // Not a point yet: the latest point is before it.
    b.extend(m.push(write(3, 0xd4, 512), 0));
    vol.append(RING, &b).unwrap();
    vol.sync().unwrap();
    let latest = m.at_cp.clone();
    assert_eq!(latest.1, 6);

    let r = store.open_point("v", &PointSpec::Latest).unwrap();
    assert_eq!(r.point().seq, 6);
    for cs in [4096, 8192, 64 << 10, 16 << 20] {
        let (calls, sums) = collect(&r, cs);
        assert_eq!(sums, expected(&latest.0, cs), "chunk size {cs}");
        assert_eq!(calls, [(0, sums.len())]);
    }
    let m1 = store
        .open_point("v", &PointSpec::Mark("m1".into()))
        .unwrap();
    let img3 = &m.points.iter().find(|p| p.0 == 3).unwrap().2;
    assert_eq!(collect(&m1, 4096).1, expected(img3, 4096));

    // The volume moves on (and its image with it): the reader's point
    // does not.
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0xee, 65536), 0));
    b.extend(m.push(Op::Flush, 0));
    vol.append(RING, &b).unwrap();
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    assert_eq!(collect(&r, 4096).1, expected(&latest.0, 4096));
    let now = store.open_point("v", &PointSpec::Latest).unwrap();
    assert_eq!(collect(&now, 4096).1, expected(&m.image, 4096));

    // Bad chunk sizes are refused; an error of the callback stops the scan.
    for bad in [0, 512, 4095, 12288, 32 << 20] {
        let e = r
            .chunk_checksums(bad, |_, _| Ok::<_, StoreError>(()))
            .unwrap_err();
        assert!(matches!(e, StoreError::BadParameters(_)), "{bad}: {e}");
    }
    let mut calls = 0;
    let e = r
        .chunk_checksums(4096, |_, _| {
            calls += 1;
            Err(StoreError::BadParameters("stop".into()))
        })
        .unwrap_err();
    assert_eq!(
        (calls, e.to_string()),
        (1, "invalid volume parameters: stop".into())
    );
}

/// A volume larger than one read and not a multiple of the chunk size:
/// several calls, contiguous, the last chunk short.
#[test]
fn large_volumes_are_read_in_bounded_pieces() {
    let d = fast_tempdir();
    let store = store_with(d.path(), VolumeOptions::default());
    let size: u64 = (9 << 20) + 1536;
    let vol = store.open_or_create_volume("big", size, 512).unwrap();
    let mut image = vec![0u8; size as usize];
    let mut b = Vec::new();
    let mut seq = 0;
    let mut put = |b: &mut Vec<u8>, sector: u64, byte: u8, len: usize| {
        seq += 1;
        let s = sector as usize * 512;
        image[s..s + len].fill(byte);
        rtbackup_proto::append_record(
            b,
            rtbackup_proto::RTB_OP_WRITE,
            0,
            seq,
            sector,
            len as u64,
            time_of(seq),
            &vec![byte; len],
        );
    };
    put(&mut b, 0, 1, 4096);
    put(&mut b, 8191, 2, 4096); // across the first 4 MiB read
    put(&mut b, size / 512 - 3, 3, 1536); // the short last chunk
    seq += 1;
    rtbackup_proto::append_record(
        &mut b,
        rtbackup_proto::RTB_OP_FLUSH,
        0,
        seq,
        0,
        0,
        time_of(seq),
        &[],
    );
    vol.append(RING, &b).unwrap();
    vol.sync().unwrap();
    let r = store.open_point("big", &PointSpec::Latest).unwrap();
    let (calls, sums) = collect(&r, 4096);
    assert_eq!(calls, [(0, 1024), (1024, 1024), (2048, 257)]);
    assert_eq!(sums, expected(&image, 4096));
    assert_eq!(sums[2304], chunk_checksum(&[3; 1536]));
    let (calls, sums) = collect(&r, 16 << 20);
    assert_eq!(calls, [(0, 1)]);
    assert_eq!(sums, [chunk_checksum(&image)]);
}
