//! The rtbackup record format and replication wire protocol.
//!
//! * [`record`]: parsing, validating and building the journal records the
//!   kernel ring produces, the agent sends and the server stores verbatim
//!   (`RtbRecordHeader` in `rust/uapi.rs`).
//! * [`frame`]: the framing of the agent ↔ server TCP protocol
//!   (Documentation/protocol.rst).
//! * [`crc`]: a RECORDS frame's CRC32C from its records' own checksums.
//! * [`verify`]: the payloads of a verify and the chunk checksum that
//!   clients and the server compute alike.
//! * [`client`]: connecting to the server for a one-shot request
//!   (rollback, verify), and its errors.

pub mod client;
pub mod crc;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod record;
pub mod verify;

pub use client::{connect, ClientError, CLIENT_TIMEOUT};
pub use frame::{
    decode_frame, encode_frame, error_code, frame_crc, frame_type, frame_type_name, read_frame,
    read_frame_raw, read_full, validate_volume_name, write_frame, write_records_frame, ErrorMsg,
    Frame, Hello, ProtoError, RollbackDone, RollbackPlan, RollbackRequest, Welcome,
    ACK_PAYLOAD_LEN, EXTENT_HEADER_LEN, EXTENT_MAGIC, FRAME_HEADER_LEN, FRAME_MAGIC,
    MAX_FRAME_PAYLOAD, MAX_JSON_PAYLOAD, PROTOCOL_VERSION,
};
pub use record::{
    append_record, build_record, header_crc, op_name, parse_header, parse_record, records,
    RecordError, RecordRef, Records, KNOWN_RECORD_FLAGS, RECORD_HEADER_LEN, SECTOR_SIZE,
};
pub use rtbackup_abi::{
    check_mark_name, record_size, RtbRecordHeader, RTB_MARK_NAME_MAX, RTB_OP_DISCARD, RTB_OP_FLUSH,
    RTB_OP_MARK, RTB_OP_PAD, RTB_OP_RESYNC, RTB_OP_RESYNC_END, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES,
    RTB_RECORD_ALIGN, RTB_RECORD_MAGIC, RTB_REC_FUA, RTB_REC_PREFLUSH, RTB_RESYNC_END_PAYLOAD,
};
pub use verify::{
    check_chunk_size, chunk_checksum, chunk_count, chunk_extent, decode_checksums,
    encode_checksums, ChunkChecksum, VerifyPoint, VerifyRequest, CHECKSUMS_HEADER_LEN,
    CHECKSUMS_MAGIC, CHECKSUM_LEN, MAX_CHECKSUMS_PAYLOAD, MAX_CHECKSUMS_PER_FRAME,
};
