//! Bounds-checked, alignment-free reading of native-endian record fields.
//!
//! Records handed over by the ring reader may live in a scratch `Vec` (when they wrapped
//! around the end of the ring), so nothing here assumes 8-byte alignment.

use super::ParseError;

/// Reads fields front to back from a record's bytes, reporting which field ran out.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    record_type: u32,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize, record_type: u32) -> Self {
        Cursor {
            buf,
            pos,
            record_type,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, field: &'static str) -> ParseError {
        ParseError::Truncated {
            record_type: self.record_type,
            field,
            offset: self.pos,
        }
    }

    pub(crate) fn bytes(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| self.truncated(field))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(field))?;
        self.pos = end;
        Ok(out)
    }

    /// `count` items of `item_size` bytes each; a count the record cannot hold is reported
    /// as such rather than as an arithmetic overflow or a giant allocation.
    pub(crate) fn array(
        &mut self,
        count: u64,
        item_size: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ParseError> {
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(item_size))
            .filter(|&len| len <= self.remaining())
            .ok_or(ParseError::CountTooLarge {
                record_type: self.record_type,
                field,
                count,
                available: self.remaining(),
            })?;
        self.bytes(len, field)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        let b = self.bytes(8, field)?;
        Ok(read_u64(b, 0))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        let b = self.bytes(4, field)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_ne_bytes(a))
    }

    /// The kernel packs `u32 pid, tid` (and `u32 cpu, res`) into one u64 slot.
    pub(crate) fn u32_pair(&mut self, field: &'static str) -> Result<(u32, u32), ParseError> {
        Ok((self.u32(field)?, self.u32(field)?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }
}

/// The u64 at byte `offset` of `b`; callers guarantee `offset + 8 <= b.len()`, and a
/// violation yields 0 rather than a panic.
pub(crate) fn read_u64(b: &[u8], offset: usize) -> u64 {
    match offset.checked_add(8).and_then(|end| b.get(offset..end)) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_ne_bytes(a)
        }
        None => 0,
    }
}

/// Bytes up to the first NUL: kernel strings are NUL-terminated and zero-padded to 8 bytes.
pub(crate) fn c_string(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => b.get(..n).unwrap_or(b),
        None => b,
    }
}
