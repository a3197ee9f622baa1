//! A minimal perf.data reader, for tests only: enough of the file and pipe formats
//! (tools/perf/Documentation/perf.data-file-format.txt) to get at the attrs and the raw
//! record stream exactly as the recording kernel wrote it.

use perfring::record::SampleFormat;

/// "PERFILE2" as a little-endian u64; the fixtures are all little-endian x86_64.
const MAGIC: u64 = 0x3245_4c49_4652_4550;
/// perf-tool record types that carry payload bytes beyond `header.size`.
pub const HEADER_ATTR: u32 = 64;
pub const HEADER_TRACING_DATA: u32 = 66;
pub const AUXTRACE: u32 = 71;
const SAMPLE_ID_ALL_FLAG: u64 = 1 << 18;

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| format!("truncated u64 at {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| format!("truncated u32 at {at}"))
}

/// One event's attr as stored in the file, reduced to what the record parser needs.
#[derive(Clone, Debug)]
pub struct FileAttr {
    pub attr_size: u32,
    pub format: SampleFormat,
    pub ids: Vec<u64>,
}

/// Decodes the SampleFormat fields of a `perf_event_attr` of `len` bytes (fields beyond an
/// old, short attr read as zero, as the kernel treats them).
pub fn parse_attr(b: &[u8]) -> Result<FileAttr, String> {
    let opt = |at: usize| {
        if b.len() >= at + 8 {
            u64_at(b, at)
        } else {
            Ok(0)
        }
    };
    let flags = u64_at(b, 40)?;
    Ok(FileAttr {
        attr_size: u32_at(b, 4)?,
        format: SampleFormat {
            sample_type: u64_at(b, 24)?,
            read_format: u64_at(b, 32)?,
            regs_user_mask: opt(80)?,
            sample_id_all: flags & SAMPLE_ID_ALL_FLAG != 0,
            branch_sample_type: opt(72)?,
        },
        ids: Vec::new(),
    })
}

/// A PERF_RECORD_HEADER_ATTR from a pipe: header, attr (`attr.size` bytes), then ids.
pub fn parse_attr_record(rec: &[u8]) -> Result<FileAttr, String> {
    let body = rec.get(8..).ok_or("short ATTR record")?;
    let mut attr = parse_attr(body)?;
    let size = attr.attr_size as usize;
    let ids = body
        .get(size..)
        .ok_or("ATTR record shorter than its attr")?;
    attr.ids = ids
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok(attr)
}

pub struct PerfData<'a> {
    /// From the file header; empty for the pipe format (attrs arrive as ATTR records).
    pub attrs: Vec<FileAttr>,
    pub piped: bool,
    data: &'a [u8],
}

impl<'a> PerfData<'a> {
    pub fn open(file: &'a [u8]) -> Result<PerfData<'a>, String> {
        if u64_at(file, 0)? != MAGIC {
            return Err("not a little-endian PERFILE2 file".into());
        }
        let header_size = u64_at(file, 8)? as usize;
        if header_size == 16 {
            let data = file.get(16..).ok_or("no pipe data")?;
            return Ok(PerfData {
                attrs: Vec::new(),
                piped: true,
                data,
            });
        }
        let attr_entry = u64_at(file, 16)? as usize;
        let (attrs_off, attrs_len) = (u64_at(file, 24)? as usize, u64_at(file, 32)? as usize);
        let (data_off, data_len) = (u64_at(file, 40)? as usize, u64_at(file, 48)? as usize);
        if attr_entry <= 16 {
            return Err(format!("bad attr entry size {attr_entry}"));
        }
        let section = file
            .get(attrs_off..attrs_off + attrs_len)
            .ok_or("attrs section outside file")?;
        let mut attrs = Vec::new();
        for entry in section.chunks_exact(attr_entry) {
            let attr_bytes = &entry[..attr_entry - 16];
            let mut attr = parse_attr(attr_bytes)?;
            let (ids_off, ids_len) = (
                u64_at(entry, attr_entry - 16)? as usize,
                u64_at(entry, attr_entry - 8)? as usize,
            );
            attr.ids = file
                .get(ids_off..ids_off + ids_len)
                .ok_or("ids outside file")?
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            attrs.push(attr);
        }
        let data = file
            .get(data_off..data_off + data_len)
            .ok_or("data section outside file")?;
        Ok(PerfData {
            attrs,
            piped: false,
            data,
        })
    }

    /// Every record in stream order; after the first framing error the walk stops (a
    /// broken size field leaves no way to find the next record).
    pub fn records(&self) -> RecordWalk<'a> {
        RecordWalk {
            data: self.data,
            pos: 0,
            failed: false,
        }
    }
}

pub struct RecordWalk<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for RecordWalk<'a> {
    type Item = Result<&'a [u8], String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let rest = &self.data[self.pos..];
        let result = (|| {
            let rt = u32_at(rest, 0).map_err(|_| "truncated record header".to_string())?;
            let size = rest
                .get(6..8)
                .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
                .ok_or("truncated record header")?;
            if size < 8 || size > rest.len() {
                return Err(format!(
                    "record type {rt} at data offset {} has impossible size {size}",
                    self.pos
                ));
            }
            // Payloads perf appends after these records without counting them in size.
            let extra = match rt {
                HEADER_TRACING_DATA => u32_at(rest, 8)? as usize,
                AUXTRACE => u64_at(rest, 8)? as usize,
                _ => 0,
            };
            let advance = size.checked_add(extra).filter(|&n| n <= rest.len());
            let advance =
                advance.ok_or(format!("payload of record type {rt} overruns the data"))?;
            self.pos += advance;
            Ok(&rest[..size])
        })();
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}
