//! MiniDebugInfo: the `.gnu_debugdata` section Fedora/RHEL ship in stripped binaries, an
//! xz-compressed ELF holding a `.symtab` of the functions `.dynsym` lacks.
//!
//! lzma-rs accumulates LZMA2 output in memory until a dictionary reset, so a hostile section
//! could expand to gigabytes before any output cap would see it. Before decompressing we
//! therefore walk the xz/LZMA2 framing (cheap, no decoding) and add up the uncompressed sizes
//! every chunk declares; the decoder enforces those declared sizes, so the sum bounds memory.

use std::io::{self, Write};

/// Real MiniDebugInfo is a few hundred KiB; anything this large is refused.
pub const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MiniDebugInfoError {
    #[error("not an xz stream this decoder understands: {0}")]
    Format(&'static str),
    #[error("declares {0} bytes uncompressed, over the {MAX_DECOMPRESSED}-byte cap")]
    TooLarge(u64),
    #[error("xz decode failed: {0}")]
    Decode(String),
}

/// Decompresses a `.gnu_debugdata` payload into the embedded ELF image.
pub fn decompress(xz: &[u8]) -> Result<Vec<u8>, MiniDebugInfoError> {
    let declared = declared_size(xz)?;
    if declared > MAX_DECOMPRESSED {
        return Err(MiniDebugInfoError::TooLarge(declared));
    }
    let mut out = CappedVec {
        buf: Vec::with_capacity(declared as usize),
        cap: declared as usize,
    };
    let mut input = io::BufReader::new(xz);
    lzma_rs::xz_decompress(&mut input, &mut out)
        .map_err(|e| MiniDebugInfoError::Decode(e.to_string()))?;
    Ok(out.buf)
}

/// Sum of the uncompressed sizes declared by all LZMA2 chunks of all blocks of the first
/// stream (MiniDebugInfo is always one stream).
fn declared_size(xz: &[u8]) -> Result<u64, MiniDebugInfoError> {
    use MiniDebugInfoError::Format;
    const MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    if xz.get(..6) != Some(MAGIC) {
        return Err(Format("bad magic"));
    }
    let check_size = match xz.get(7).map(|f| f & 0x0f) {
        Some(0) => 0,
        Some(1..=3) => 4,
        Some(4..=6) => 8,
        Some(7..=9) => 16,
        Some(10..=12) => 32,
        Some(_) => 64,
        None => return Err(Format("truncated header")),
    };
    let mut pos = 12usize;
    let mut total = 0u64;
    loop {
        let header_size_byte = *xz.get(pos).ok_or(Format("truncated block"))?;
        if header_size_byte == 0 {
            // The index follows; every block has been accounted for.
            return Ok(total);
        }
        let block_start = pos;
        pos += (usize::from(header_size_byte) + 1) * 4;
        // LZMA2 chunks until the end marker.
        loop {
            let control = *xz.get(pos).ok_or(Format("truncated LZMA2 data"))?;
            pos += 1;
            match control {
                0 => break,
                1 | 2 => {
                    let size = be16(xz, pos)? + 1;
                    total += size;
                    pos = pos
                        .checked_add(2 + size as usize)
                        .ok_or(Format("bad size"))?;
                }
                0x80..=0xff => {
                    let unpacked = ((u64::from(control & 0x1f) << 16) | be16(xz, pos)?) + 1;
                    let packed = be16(xz, pos + 2)? + 1;
                    let props = if control >= 0xc0 { 1 } else { 0 };
                    total += unpacked;
                    pos = pos
                        .checked_add(4 + props + packed as usize)
                        .ok_or(Format("bad size"))?;
                }
                _ => return Err(Format("invalid LZMA2 control byte")),
            }
            if total > MAX_DECOMPRESSED {
                return Err(MiniDebugInfoError::TooLarge(total));
            }
        }
        // Block padding to a multiple of four, then the check.
        let block_len = pos - block_start;
        pos += (4 - block_len % 4) % 4 + check_size;
    }
}

fn be16(data: &[u8], pos: usize) -> Result<u64, MiniDebugInfoError> {
    let b = data
        .get(pos..pos + 2)
        .ok_or(MiniDebugInfoError::Format("truncated LZMA2 chunk header"))?;
    Ok(u64::from(u16::from_be_bytes([b[0], b[1]])))
}

/// A sink that refuses to grow past the declared size, as a second line of defence should the
/// decoder ever produce more than the framing announced.
struct CappedVec {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for CappedVec {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::other("decompressed data exceeds declared size"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut io::BufReader::new(data), &mut out).expect("compress");
        out
    }

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let packed = xz(&data);
        assert_eq!(declared_size(&packed).expect("size"), data.len() as u64);
        assert_eq!(decompress(&packed).expect("decompress"), data);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(decompress(b"not xz at all").is_err());
        let packed = xz(&[7u8; 10_000]);
        for cut in [0, 6, 12, 13, 20, packed.len() / 2, packed.len() - 1] {
            assert!(decompress(&packed[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_declaration_is_refused_before_decoding() {
        // Hand-made stream: header, one block whose LZMA2 data is many "uncompressed" chunks
        // declaring 64 KiB each but whose payload we never need to read: the walk stops at the cap.
        let mut s = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 0, 1, 0, 0, 0, 0];
        s.extend_from_slice(&[2, 0, 0, 0, 0x21, 1, 0, 0]); // block header (12 bytes incl. size)
        s.extend_from_slice(&[0, 0, 0, 0]);
        for _ in 0..1100 {
            s.push(1);
            s.extend_from_slice(&[0xff, 0xff]);
            s.extend(std::iter::repeat_n(0u8, 0x10000));
        }
        s.push(0);
        assert!(matches!(
            declared_size(&s),
            Err(MiniDebugInfoError::TooLarge(_))
        ));
    }
}
