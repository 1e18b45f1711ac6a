//! The rtbackup record format and replication wire protocol.
//!
//! * [`record`]: parsing, validating and building the journal records the
//!   kernel ring produces, the agent sends and the server stores verbatim
//!   (`RtbRecordHeader` in `rust/uapi.rs`).
//! * [`frame`]: the framing of the agent ↔ server TCP protocol
//!   (Documentation/protocol.rst).

pub mod frame;
pub mod record;

pub use frame::{
    decode_frame, encode_frame, error_code, frame_type, frame_type_name, read_frame,
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
