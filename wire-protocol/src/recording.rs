//! The recording file format: a versioned header followed by checksummed
//! `taskscope.v1.Update` frames.
//!
//! `taskscope record` writes what a target streams, `taskscope replay` and
//! the console read it back. Recordings are cut short in real life (the
//! recorder is killed, the disk fills, a copy is interrupted), so the reader
//! hands out every whole frame before reporting how the file ends, and a
//! damaged frame is detected by its checksum instead of being decoded into
//! nonsense.
//!
//! # Format (version 1)
//! All integers are little-endian.
//!
//! Header, 16 bytes:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic `89 54 53 52 0D 0A 1A 0A` (`\x89TSR\r\n\x1a\n`: a high byte, then line endings and ^Z that text-mode transfers would mangle, as in PNG) |
//! | 8 | 2 | format version, `u16`; this is version [`FORMAT_VERSION`] |
//! | 10 | 2 | flags, `u16`; none are defined in version 1, writers write 0 and readers ignore bits they do not know |
//! | 12 | 4 | reserved, written as 0, ignored by readers |
//!
//! Then zero or more frames, back to back until the end of the file:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4 | payload length `n`, `u32`; at most [`MAX_FRAME_BYTES`] (64 MiB) |
//! | 4 | 4 | CRC-32 (IEEE 802.3, as zlib's `crc32`) of the payload, `u32` |
//! | 8 | `n` | payload: one protobuf-encoded `taskscope.v1.Update` |
//!
//! The first frame is a full state (its chunks, if split; the first carries
//! `process`); deltas follow. Applying the updates in order to an empty
//! [`crate::model::State`] (or a [`crate::state::StateReplica`]) reproduces
//! what the console showed.
//!
//! # Reading damaged files
//! * A file that ends inside the header or a frame yields every whole frame,
//!   then [`RecordingError::Truncated`].
//! * A checksum mismatch or a length over [`MAX_FRAME_BYTES`] yields
//!   [`RecordingError::Corrupt`] and ends the iteration (the next frame's
//!   position is not trustworthy); such a length is never allocated.
//! * A frame whose checksum matches but whose payload is not an `Update`
//!   yields [`RecordingError::Undecodable`] and iteration continues.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use prost::Message;

use crate::proto;

/// The 8 bytes every recording starts with.
pub const MAGIC: [u8; 8] = *b"\x89TSR\r\n\x1a\n";
/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Size of a frame's length and checksum.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may have; longer lengths mean corruption.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// The usual file name extension of recordings.
pub const FILE_EXTENSION: &str = "tsrec";

/// What went wrong reading or writing a recording. Offsets are byte offsets
/// from the start of the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    #[error("I/O error at byte {offset} of the recording: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("not a taskscope recording (starts with {found:02x?})")]
    NotARecording { found: Vec<u8> },
    #[error("recording format version {found} is newer than this taskscope understands ({supported}); upgrade taskscope")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("recording is truncated at byte {offset}, after {frames_read} whole frames (the recorder probably stopped mid-write)")]
    Truncated { frames_read: u64, offset: u64 },
    #[error("recording frame {frame} at byte {offset} is corrupt (bad checksum or impossible length); the frames before it are intact")]
    Corrupt { frame: u64, offset: u64 },
    #[error("recording frame {frame} at byte {offset} has a valid checksum but is not a taskscope update: {source}")]
    Undecodable {
        frame: u64,
        offset: u64,
        #[source]
        source: prost::DecodeError,
    },
    #[error("an update of {length} bytes is larger than a recording frame may be ({max} bytes)")]
    FrameTooLarge { length: usize, max: usize },
}

/// The decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingHeader {
    pub version: u16,
    pub flags: u16,
}

fn encode_header(h: RecordingHeader) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&h.version.to_le_bytes());
    out[10..12].copy_from_slice(&h.flags.to_le_bytes());
    out
}

/// Writes a recording: the header on creation, then one frame per update.
#[derive(Debug)]
pub struct RecordingWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    offset: u64,
    frames: u64,
}

impl<W: Write> RecordingWriter<W> {
    /// Writes the header to `out`.
    pub fn new(mut out: W) -> Result<Self, RecordingError> {
        let header = encode_header(RecordingHeader {
            version: FORMAT_VERSION,
            flags: 0,
        });
        out.write_all(&header)
            .map_err(|source| RecordingError::Io { offset: 0, source })?;
        Ok(Self {
            out,
            buf: Vec::new(),
            offset: HEADER_LEN as u64,
            frames: 0,
        })
    }

    /// Appends one frame holding `update`.
    pub fn write_update(&mut self, update: &proto::Update) -> Result<(), RecordingError> {
        let length = update.encoded_len();
        if length > MAX_FRAME_BYTES {
            return Err(RecordingError::FrameTooLarge {
                length,
                max: MAX_FRAME_BYTES,
            });
        }
        self.buf.clear();
        self.buf.reserve(FRAME_HEADER_LEN + length);
        self.buf.extend_from_slice(&(length as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        update
            .encode(&mut self.buf)
            .map_err(|e| RecordingError::Io {
                offset: self.offset,
                source: io::Error::other(e),
            })?;
        let crc = crc32fast::hash(&self.buf[FRAME_HEADER_LEN..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.out
            .write_all(&self.buf)
            .map_err(|source| RecordingError::Io {
                offset: self.offset,
                source,
            })?;
        self.offset += self.buf.len() as u64;
        self.frames += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.out.flush().map_err(|source| RecordingError::Io {
            offset: self.offset,
            source,
        })
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames
    }

    /// Bytes written so far, header included.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W, RecordingError> {
        self.flush()?;
        Ok(self.out)
    }
}

/// Creates (or truncates) the file at `path` and writes the header.
pub fn create_recording(
    path: impl AsRef<Path>,
) -> Result<RecordingWriter<BufWriter<File>>, RecordingError> {
    let file = File::create(path).map_err(|source| RecordingError::Io { offset: 0, source })?;
    RecordingWriter::new(BufWriter::new(file))
}

/// Reads `buf.len()` bytes unless the input ends first; returns how many
/// were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads a recording frame by frame: an iterator of updates that ends with
/// at most one error (see the module docs for what each error means).
#[derive(Debug)]
pub struct RecordingReader<R: Read> {
    input: R,
    header: RecordingHeader,
    offset: u64,
    frames: u64,
    done: bool,
}

impl<R: Read> RecordingReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, RecordingError> {
        let mut h = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut h)
            .map_err(|source| RecordingError::Io { offset: 0, source })?;
        let magic_len = n.min(MAGIC.len());
        if h[..magic_len] != MAGIC[..magic_len] {
            return Err(RecordingError::NotARecording {
                found: h[..magic_len].to_vec(),
            });
        }
        if n < HEADER_LEN {
            return Err(RecordingError::Truncated {
                frames_read: 0,
                offset: n as u64,
            });
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        let flags = u16::from_le_bytes([h[10], h[11]]);
        if version == 0 || version > FORMAT_VERSION {
            return Err(RecordingError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(Self {
            input,
            header: RecordingHeader { version, flags },
            offset: HEADER_LEN as u64,
            frames: 0,
            done: false,
        })
    }

    pub fn header(&self) -> RecordingHeader {
        self.header
    }

    /// Whole frames read so far.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn next_frame(&mut self) -> Option<Result<proto::Update, RecordingError>> {
        let frame_start = self.offset;
        let io_err = |source| RecordingError::Io {
            offset: frame_start,
            source,
        };
        let truncated = |at: u64, frames_read| RecordingError::Truncated {
            frames_read,
            offset: at,
        };

        let mut fh = [0u8; FRAME_HEADER_LEN];
        let n = match read_full(&mut self.input, &mut fh) {
            Ok(n) => n,
            Err(e) => return Some(Err(io_err(e))),
        };
        if n == 0 {
            return None;
        }
        if n < FRAME_HEADER_LEN {
            return Some(Err(truncated(frame_start + n as u64, self.frames)));
        }
        let length = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
        let crc = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
        if length > MAX_FRAME_BYTES {
            return Some(Err(RecordingError::Corrupt {
                frame: self.frames,
                offset: frame_start,
            }));
        }
        // Read in steps so a lying length on a short file costs no more
        // memory than the file has.
        let mut payload = Vec::new();
        let mut remaining = length;
        while remaining > 0 {
            let step = remaining.min(1024 * 1024);
            let start = payload.len();
            payload.resize(start + step, 0);
            let got = match read_full(&mut self.input, &mut payload[start..]) {
                Ok(got) => got,
                Err(e) => return Some(Err(io_err(e))),
            };
            if got < step {
                let at = frame_start + (FRAME_HEADER_LEN + start + got) as u64;
                return Some(Err(truncated(at, self.frames)));
            }
            remaining -= step;
        }
        if crc32fast::hash(&payload) != crc {
            return Some(Err(RecordingError::Corrupt {
                frame: self.frames,
                offset: frame_start,
            }));
        }
        let frame = self.frames;
        self.frames += 1;
        self.offset = frame_start + (FRAME_HEADER_LEN + length) as u64;
        Some(proto::Update::decode(payload.as_slice()).map_err(|source| {
            RecordingError::Undecodable {
                frame,
                offset: frame_start,
                source,
            }
        }))
    }
}

impl<R: Read> Iterator for RecordingReader<R> {
    type Item = Result<proto::Update, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_frame();
        match &item {
            None
            | Some(Err(RecordingError::Truncated { .. }))
            | Some(Err(RecordingError::Corrupt { .. }))
            | Some(Err(RecordingError::Io { .. })) => self.done = true,
            _ => {}
        }
        item
    }
}

/// Opens the recording at `path` and checks its header.
pub fn open_recording(
    path: impl AsRef<Path>,
) -> Result<RecordingReader<BufReader<File>>, RecordingError> {
    let file = File::open(path).map_err(|source| RecordingError::Io { offset: 0, source })?;
    RecordingReader::new(BufReader::new(file))
}

/// Reads every update `input` holds. Returns what could be read and, if the
/// recording did not end cleanly, the first error (frames after an
/// [`RecordingError::Undecodable`] one are still returned).
pub fn read_recording_from<R: Read>(input: R) -> (Vec<proto::Update>, Option<RecordingError>) {
    let reader = match RecordingReader::new(input) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut updates = Vec::new();
    let mut first_error = None;
    for item in reader {
        match item {
            Ok(u) => updates.push(u),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    (updates, first_error)
}

/// [`read_recording_from`] for the file at `path`.
pub fn read_recording(path: impl AsRef<Path>) -> (Vec<proto::Update>, Option<RecordingError>) {
    match File::open(path) {
        Ok(f) => read_recording_from(BufReader::new(f)),
        Err(source) => (Vec::new(), Some(RecordingError::Io { offset: 0, source })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{full_process, full_task};
    use crate::model::Timestamp;

    fn updates() -> Vec<proto::Update> {
        vec![
            proto::Update {
                at: Some(Timestamp(1).into()),
                process: Some((&full_process()).into()),
                full: true,
                last_chunk: true,
                tasks: vec![(&full_task(1)).into(), (&full_task(2)).into()],
                ..Default::default()
            },
            proto::Update {
                at: Some(Timestamp(2).into()),
                evicted_task_ids: vec![2],
                ..Default::default()
            },
            proto::Update {
                at: Some(Timestamp(3).into()),
                tasks: vec![(&full_task(3)).into()],
                paused: true,
                ..Default::default()
            },
        ]
    }

    fn recording_bytes(updates: &[proto::Update]) -> (Vec<u8>, Vec<usize>) {
        let mut w = RecordingWriter::new(Vec::new()).expect("header");
        let mut ends = Vec::new();
        for u in updates {
            w.write_update(u).expect("frame");
            ends.push(w.bytes_written() as usize);
        }
        (w.into_inner().expect("flush"), ends)
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(format!("run.{FILE_EXTENSION}"));
        let mut w = create_recording(&path).expect("create");
        for u in updates() {
            w.write_update(&u).expect("write");
        }
        assert_eq!(w.frames_written(), 3);
        w.flush().expect("flush");
        drop(w);
        let (got, err) = read_recording(&path);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, updates());
        let reader = open_recording(&path).expect("open");
        assert_eq!(
            reader.header(),
            RecordingHeader {
                version: 1,
                flags: 0
            }
        );
    }

    #[test]
    fn header_is_the_documented_bytes() {
        let (bytes, ends) = recording_bytes(&updates()[..1]);
        assert_eq!(&bytes[..8], b"\x89TSR\r\n\x1a\n");
        assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 0, 0, 0, 0]);
        let len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        assert_eq!(ends[0], HEADER_LEN + FRAME_HEADER_LEN + len);
        assert_eq!(crc, crc32fast::hash(&bytes[24..24 + len]));
        let u = proto::Update::decode(&bytes[24..24 + len]).expect("payload is an Update");
        assert_eq!(u, updates()[0]);
    }

    #[test]
    fn truncation_at_every_offset_keeps_every_whole_frame() {
        let all = updates();
        let (bytes, ends) = recording_bytes(&all);
        for cut in 0..bytes.len() {
            let (got, err) = read_recording_from(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(got, all[..whole].to_vec(), "cut at {cut}");
            let boundary = cut == HEADER_LEN || ends.contains(&cut);
            match err {
                None => assert!(boundary, "cut at {cut} must report truncation"),
                Some(RecordingError::Truncated {
                    frames_read,
                    offset,
                }) => {
                    assert!(!boundary, "cut at {cut} is a clean end");
                    assert_eq!(frames_read, whole as u64, "cut at {cut}");
                    assert_eq!(offset, cut as u64, "cut at {cut}");
                }
                Some(other) => panic!("cut at {cut}: {other}"),
            }
        }
        let (got, err) = read_recording_from(bytes.as_slice());
        assert_eq!((got.len(), err.is_none()), (3, true));
    }

    #[test]
    fn a_flipped_payload_byte_is_detected() {
        let (mut bytes, ends) = recording_bytes(&updates());
        let in_second_payload = ends[0] + FRAME_HEADER_LEN + 3;
        bytes[in_second_payload] ^= 0x40;
        let (got, err) = read_recording_from(bytes.as_slice());
        assert_eq!(
            got,
            updates()[..1].to_vec(),
            "frames before the damage survive"
        );
        match err {
            Some(RecordingError::Corrupt { frame, offset }) => {
                assert_eq!((frame, offset), (1, ends[0] as u64));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn absurd_lengths_are_corruption_and_are_not_allocated() {
        let (mut bytes, _) = recording_bytes(&updates()[..1]);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let (got, err) = read_recording_from(bytes.as_slice());
        assert!(got.is_empty());
        assert!(matches!(
            err,
            Some(RecordingError::Corrupt {
                frame: 0,
                offset: 16
            })
        ));
        // A plausible but lying length on a short file is a truncation.
        let (mut bytes, _) = recording_bytes(&updates()[..1]);
        bytes[16..20].copy_from_slice(&(60u32 * 1024 * 1024).to_le_bytes());
        let (_, err) = read_recording_from(bytes.as_slice());
        assert!(matches!(
            err,
            Some(RecordingError::Truncated { frames_read: 0, .. })
        ));
    }

    #[test]
    fn a_checksummed_non_update_is_reported_and_skipped() {
        let (mut bytes, _) = recording_bytes(&[]);
        let garbage = [0xffu8; 5];
        bytes.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&garbage).to_le_bytes());
        bytes.extend_from_slice(&garbage);
        let (more, _) = recording_bytes(&updates()[..1]);
        bytes.extend_from_slice(&more[HEADER_LEN..]);
        let (got, err) = read_recording_from(bytes.as_slice());
        assert_eq!(got, updates()[..1].to_vec());
        assert!(matches!(
            err,
            Some(RecordingError::Undecodable {
                frame: 0,
                offset: 16,
                ..
            })
        ));
    }

    #[test]
    fn other_files_and_future_versions_are_refused() {
        let (got, err) = read_recording_from(&b"{\"tasks\": []}\n"[..]);
        assert!(got.is_empty());
        match err {
            Some(RecordingError::NotARecording { found }) => {
                assert_eq!(found, b"{\"tasks\"".to_vec())
            }
            other => panic!("expected NotARecording, got {other:?}"),
        }
        let (mut bytes, _) = recording_bytes(&updates());
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let err = RecordingReader::new(bytes.as_slice()).expect_err("refused");
        assert!(matches!(
            err,
            RecordingError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("upgrade taskscope"));
        // Unknown flags and reserved bytes are ignored.
        let (mut bytes, _) = recording_bytes(&updates());
        bytes[10] = 0x80;
        bytes[13] = 7;
        let (got, err) = read_recording_from(bytes.as_slice());
        assert_eq!((got.len(), err.is_none()), (3, true));
        let (_, err) = read_recording(std::path::Path::new("/nonexistent/x.tsrec"));
        assert!(matches!(err, Some(RecordingError::Io { .. })));
    }
}
