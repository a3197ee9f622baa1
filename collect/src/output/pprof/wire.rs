//! The protobuf wire format, just what profile.proto needs: varints, length-delimited
//! fields and packed repeated integers. The reader never trusts lengths: every read is
//! bounds-checked and answers an error instead of panicking.

/// Wire types used by profile.proto.
pub const VARINT: u8 = 0;
/// Wire type of a fixed 64-bit value.
pub const I64: u8 = 1;
/// Wire type of a length-delimited value.
pub const LEN: u8 = 2;
/// Wire type of a fixed 32-bit value.
pub const I32: u8 = 5;

/// Appends protobuf fields to a buffer.
#[derive(Default)]
pub struct Writer {
    /// The encoded bytes.
    pub buf: Vec<u8>,
}

impl Writer {
    /// A varint, without a tag.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// A scalar field; proto3 leaves zero values out.
    pub fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    /// A signed integer field (as varint; omitted when 0).
    pub fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    /// A bool field (omitted when false).
    pub fn bool(&mut self, field: u32, v: bool) {
        self.uint(field, u64::from(v));
    }

    /// A string or bytes field, written even when empty (`string_table[0]` must be "").
    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// An embedded message built by `f`.
    pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        f(&mut inner);
        self.bytes(field, &inner.buf);
    }

    /// A packed repeated varint field (omitted when empty).
    pub fn packed(&mut self, field: u32, values: impl Iterator<Item = u64>) {
        let mut inner = Writer::default();
        for v in values {
            inner.varint(v);
        }
        if !inner.buf.is_empty() {
            self.bytes(field, &inner.buf);
        }
    }
}

/// Malformed protobuf input: what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed protobuf: {}", self.0)
    }
}

/// One field value as read.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// A varint.
    Varint(u64),
    /// A fixed 32- or 64-bit value.
    Fixed(u64),
    /// Length-delimited bytes.
    Bytes(&'a [u8]),
}

impl Value<'_> {
    /// The value as an integer (varint or fixed).
    pub fn as_u64(&self) -> Result<u64, WireError> {
        match *self {
            Value::Varint(v) | Value::Fixed(v) => Ok(v),
            Value::Bytes(_) => Err(WireError("expected an integer")),
        }
    }

    /// The value as bytes (length-delimited only).
    pub fn as_bytes(&self) -> Result<&[u8], WireError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(WireError("expected bytes")),
        }
    }

    /// A repeated integer field, packed or not.
    pub fn push_ints(&self, out: &mut Vec<u64>) -> Result<(), WireError> {
        match self {
            Value::Bytes(b) => {
                let mut r = Reader::new(b);
                while !r.done() {
                    out.push(r.varint()?);
                }
                Ok(())
            }
            v => {
                out.push(v.as_u64()?);
                Ok(())
            }
        }
    }
}

/// Reads protobuf fields from bytes, bounds-checked.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Whether everything was read.
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// A varint.
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .data
                .get(self.pos)
                .ok_or(WireError("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or(WireError("length past the end"))?;
        let s = self.data.get(self.pos..end).ok_or(WireError("bad range"))?;
        self.pos = end;
        Ok(s)
    }

    /// The next field number and value, or `None` at the end.
    pub fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.done() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError("field number too big"))?;
        let v = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            I64 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Fixed(u64::from_le_bytes(a))
            }
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| WireError("length"))?;
                Value::Bytes(self.take(n)?)
            }
            I32 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed(u64::from(u32::from_le_bytes(a)))
            }
            _ => return Err(WireError("unsupported wire type")),
        };
        Ok(Some((field, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX,
            (-1i64) as u64,
        ] {
            let mut w = Writer::default();
            w.varint(v);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.done());
        }
        let mut w = Writer::default();
        w.varint(300);
        assert_eq!(w.buf, vec![0xac, 0x02]);
    }

    #[test]
    fn truncated_and_overlong_input_is_an_error() {
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        // Field 1, LEN, claims 5 bytes but has 1.
        assert!(Reader::new(&[0x0a, 0x05, 0x00]).field().is_err());
        // Wire type 3 (groups) is not used by profile.proto.
        assert!(Reader::new(&[0x0b]).field().is_err());
    }

    #[test]
    fn packed_and_unpacked_repeated_ints_read_the_same() {
        let mut w = Writer::default();
        w.packed(1, [1u64, 2, 300].into_iter());
        let mut r = Reader::new(&w.buf);
        let (f, v) = r.field().unwrap().unwrap();
        let mut out = Vec::new();
        v.push_ints(&mut out).unwrap();
        assert_eq!((f, out), (1, vec![1, 2, 300]));
        let mut out = Vec::new();
        Value::Varint(7).push_ints(&mut out).unwrap();
        assert_eq!(out, vec![7]);
    }
}
