//! Hand-assembles records byte by byte, independently of the parser under test.

/// Builds one record: header first, `size` patched in by [`RecordBuilder::finish`].
pub struct RecordBuilder {
    buf: Vec<u8>,
}

impl RecordBuilder {
    pub fn new(record_type: u32, misc: u16) -> Self {
        let mut buf = Vec::new();
        buf.extend_from_slice(&record_type.to_ne_bytes());
        buf.extend_from_slice(&misc.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        RecordBuilder { buf }
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn u32_pair(self, a: u32, b: u32) -> Self {
        self.u32(a).u32(b)
    }

    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// A kernel string: NUL-terminated, zero-padded to a multiple of 8.
    pub fn c_string(mut self, s: &[u8]) -> Self {
        self.buf.extend_from_slice(s);
        self.buf.push(0);
        while self.buf.len() % 8 != 0 {
            self.buf.push(0);
        }
        self
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Patches the size field with the real length (must fit u16).
    pub fn finish(mut self) -> Vec<u8> {
        let size = u16::try_from(self.buf.len()).expect("test record larger than u16");
        self.buf[6..8].copy_from_slice(&size.to_ne_bytes());
        self.buf
    }

    /// Leaves the size field as given (for corrupt-record tests).
    pub fn finish_with_size(mut self, size: u16) -> Vec<u8> {
        self.buf[6..8].copy_from_slice(&size.to_ne_bytes());
        self.buf
    }
}

/// A typical `perf record -g` sample: IP|TID|TIME|CPU|PERIOD|CALLCHAIN.
pub fn callchain_sample(frames: &[u64]) -> Vec<u8> {
    let mut b = RecordBuilder::new(9, 2)
        .u64(0x40_1000)
        .u32_pair(100, 101)
        .u64(123_456_789)
        .u32_pair(1, 0)
        .u64(10_000)
        .u64(frames.len() as u64);
    for f in frames {
        b = b.u64(*f);
    }
    b.finish()
}
