//! ELF section contents, inflated within budget: `SHF_COMPRESSED` sections (zlib, zstd) and
//! GNU `.zdebug_*` sections are untrusted input whose header declares the inflated size.
//!
//! The declared size is checked against [`budget`](crate::budget) *before* anything is
//! allocated, and the decoders are bounded by it: a stream that inflates to more than it
//! declares is an error, not a larger buffer (object's own zstd path reads to the end first
//! and compares afterwards, so it is not used).

use std::io::Read;

use object::{CompressedData, CompressionFormat, ObjectSection};

use crate::budget::InflateCharge;
use crate::bytes::FileBytes;
use crate::error::SectionError;

/// A section's bytes: borrowed from the file when stored plainly, else inflated and charged
/// against the budget until dropped.
pub enum SectionContents<'data> {
    /// Stored as is: borrowed from the file.
    Plain(&'data [u8]),
    /// Inflated, holding its budget charge.
    Inflated(Vec<u8>, InflateCharge),
}

impl SectionContents<'_> {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            SectionContents::Plain(b) => b,
            SectionContents::Inflated(v, _) => v,
        }
    }

    /// Shared, immutable bytes that keep the budget charge for as long as any clone lives;
    /// plain bytes are copied (callers use this for small sections or when they must own).
    pub fn into_file_bytes(self) -> FileBytes {
        match self {
            SectionContents::Plain(b) => FileBytes::owned(b.to_vec()),
            SectionContents::Inflated(v, charge) => FileBytes::charged(v, charge),
        }
    }
}

/// The contents of `section`, inflating it if compressed. `Err` explains a refusal (over
/// budget) or corrupt compressed data; either way the caller goes without the section.
pub fn section_contents<'data>(
    section: &impl ObjectSection<'data>,
) -> Result<SectionContents<'data>, SectionError> {
    let c = section.compressed_data().map_err(SectionError::Header)?;
    inflate(c)
}

/// Inflates one compressed blob within budget (the part fuzzers drive directly).
pub fn inflate(c: CompressedData<'_>) -> Result<SectionContents<'_>, SectionError> {
    if c.format == CompressionFormat::None {
        return Ok(SectionContents::Plain(c.data));
    }
    let charge = InflateCharge::reserve(c.uncompressed_size)?;
    let size = usize::try_from(c.uncompressed_size).map_err(|_| SectionError::TooLarge)?;
    let mut out = Vec::new();
    out.try_reserve_exact(size)
        .map_err(|_| SectionError::Allocation)?;
    match c.format {
        CompressionFormat::Zlib => {
            let mut z = flate2::Decompress::new(true);
            // Writes at most the reserved capacity, i.e. the declared size; a stream that
            // goes on past it does not end there and is refused.
            let status = z
                .decompress_vec(c.data, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| corrupt("zlib", e))?;
            if status != flate2::Status::StreamEnd {
                return Err(SectionError::SizeMismatch(
                    "zlib data does not end where its header says".into(),
                ));
            }
        }
        CompressionFormat::Zstandard => inflate_zstd(c.data, size, &mut out)?,
        other => return Err(SectionError::Unsupported(format!("{other:?}"))),
    }
    if out.len() != size {
        return Err(SectionError::SizeMismatch(format!(
            "inflates to {} bytes, not the {size} its header declares",
            out.len()
        )));
    }
    Ok(SectionContents::Inflated(out, charge))
}

/// zstd frames (skippable ones skipped) appended to `out`, never past `size` bytes.
fn corrupt(format: &'static str, e: impl std::fmt::Display) -> SectionError {
    SectionError::Corrupt {
        format,
        detail: e.to_string(),
    }
}

fn inflate_zstd(mut input: &[u8], size: usize, out: &mut Vec<u8>) -> Result<(), SectionError> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    while !input.is_empty() {
        let decoder = match ruzstd::decoding::StreamingDecoder::new(&mut input) {
            Ok(d) => d,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                input = input
                    .get(length as usize..)
                    .ok_or_else(|| corrupt("zstd", "truncated skippable frame"))?;
                continue;
            }
            Err(e) => return Err(corrupt("zstd", e)),
        };
        // One byte more than may fit tells an over-long stream from an exact one.
        let room = (size - out.len()) as u64 + 1;
        decoder
            .take(room)
            .read_to_end(out)
            .map_err(|e| corrupt("zstd", e))?;
        if out.len() > size {
            return Err(SectionError::SizeMismatch(
                "zstd data inflates to more than its header declares".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BudgetError;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn compressed(format: CompressionFormat, data: &[u8], declared: u64) -> CompressedData<'_> {
        CompressedData {
            format,
            data,
            uncompressed_size: declared,
        }
    }

    #[test]
    fn zlib_round_trip_and_lies_about_the_size() {
        let plain = vec![7u8; 100_000];
        let z = zlib(&plain);
        let got = inflate(compressed(CompressionFormat::Zlib, &z, 100_000)).unwrap();
        assert_eq!(got.bytes(), &plain[..]);
        // Declaring less than the stream holds: bounded, and an error.
        assert!(inflate(compressed(CompressionFormat::Zlib, &z, 1000)).is_err());
        assert!(inflate(compressed(CompressionFormat::Zlib, &z, 200_000)).is_err());
        assert!(inflate(compressed(CompressionFormat::Zlib, b"garbage", 10)).is_err());
    }

    #[test]
    fn over_budget_declarations_are_refused_before_inflating() {
        let z = zlib(&[0u8; 10]);
        let err = inflate(compressed(CompressionFormat::Zlib, &z, 2 << 30))
            .err()
            .expect("refused");
        assert!(
            matches!(err, SectionError::Budget(BudgetError::Section { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("budget"), "{err}");
    }

    #[test]
    fn zstd_that_inflates_past_its_declaration_is_bounded() {
        // A valid zstd frame of 64 KiB of zeros (raw block), declared as 16 bytes.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
        // Frame header: single segment, 4-byte content size.
        frame.push(0b1010_0000);
        frame.extend_from_slice(&(65536u32).to_le_bytes());
        // One RLE block, last: type 1, size 65536 (block header is 3 bytes LE).
        let header: u32 = 1 | (1 << 1) | (65536 << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
        let ok = inflate(compressed(CompressionFormat::Zstandard, &frame, 65536)).unwrap();
        assert_eq!(ok.bytes().len(), 65536);
        assert!(inflate(compressed(CompressionFormat::Zstandard, &frame, 16)).is_err());
    }
}
