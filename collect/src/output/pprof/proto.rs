//! profile.proto (github.com/google/pprof/proto/profile.proto) messages, their encoding, and
//! a decoder for reading profiles back (`psample diff`/`report` accept pprof input).

use std::io::{Read, Write};

use super::wire::{Reader, Value, WireError, Writer};

/// `ValueType`: what a value means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueType {
    /// Index into the string table.
    pub ty: i64,
    /// The unit (string table index).
    pub unit: i64,
}

/// `Label`: a key and a string or number attached to a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// The key (string table index).
    pub key: i64,
    /// A string value (string table index), or 0.
    pub str: i64,
    /// A numeric value.
    pub num: i64,
}

/// `Sample`: a stack and its values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Leaf first.
    pub location_id: Vec<u64>,
    /// One value per `sample_type`.
    pub value: Vec<i64>,
    /// Labels: pid, tid, thread, container, and the user's `--label`s.
    pub label: Vec<Label>,
}

/// `Mapping`: a mapped file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Its id (1-based).
    pub id: u64,
    /// Start address.
    pub memory_start: u64,
    /// End address (exclusive).
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    pub file_offset: u64,
    /// File name (string table index).
    pub filename: i64,
    /// Build-id in hex (string table index).
    pub build_id: i64,
    /// Its locations have function names.
    pub has_functions: bool,
    /// Its locations have file names.
    pub has_filenames: bool,
    /// Its locations have line numbers.
    pub has_line_numbers: bool,
    /// Its locations have inlined frames.
    pub has_inline_frames: bool,
}

/// `Line`: one function (of an inline chain) at a location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Line {
    /// The function's id.
    pub function_id: u64,
    /// Source line (0: unknown).
    pub line: i64,
}

/// `Location`: one address and the functions it is in, innermost first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Its id (1-based).
    pub id: u64,
    /// Its mapping's id (0: none).
    pub mapping_id: u64,
    /// The address.
    pub address: u64,
    /// Innermost (most deeply inlined) first; the last is the function the address is in.
    pub line: Vec<Line>,
}

/// `Function`: a function name and its source file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Function {
    /// Its id (1-based).
    pub id: u64,
    /// Name (string table index).
    pub name: i64,
    /// System name, e.g. mangled (string table index).
    pub system_name: i64,
    /// Source file (string table index).
    pub filename: i64,
    /// First line of the function (0: unknown).
    pub start_line: i64,
}

/// `Profile`, the message of a pprof file (the fields psample reads and writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// What each sample value means.
    pub sample_type: Vec<ValueType>,
    /// The samples.
    pub sample: Vec<Sample>,
    /// Mapped files.
    pub mapping: Vec<Mapping>,
    /// Addresses.
    pub location: Vec<Location>,
    /// Functions.
    pub function: Vec<Function>,
    /// Strings; index 0 is the empty string.
    pub string_table: Vec<String>,
    /// Start, nanoseconds since the epoch.
    pub time_nanos: i64,
    /// Length, nanoseconds.
    pub duration_nanos: i64,
    /// What the period is.
    pub period_type: Option<ValueType>,
    /// Sampling period.
    pub period: i64,
    /// Comments (string table indices).
    pub comment: Vec<i64>,
    /// The sample type shown by default (string table index).
    pub default_sample_type: i64,
}

fn value_type(w: &mut Writer, field: u32, v: &ValueType) {
    w.message(field, |m| {
        m.int(1, v.ty);
        m.int(2, v.unit);
    });
}

impl Profile {
    /// String `idx` of the string table (empty when out of range).
    pub fn string(&self, idx: i64) -> &str {
        usize::try_from(idx)
            .ok()
            .and_then(|i| self.string_table.get(i))
            .map_or("", String::as_str)
    }

    /// The protobuf encoding (not gzipped).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for st in &self.sample_type {
            value_type(&mut w, 1, st);
        }
        for s in &self.sample {
            w.message(2, |m| {
                m.packed(1, s.location_id.iter().copied());
                m.packed(2, s.value.iter().map(|v| *v as u64));
                for l in &s.label {
                    m.message(3, |lm| {
                        lm.int(1, l.key);
                        lm.int(2, l.str);
                        lm.int(3, l.num);
                    });
                }
            });
        }
        for mp in &self.mapping {
            w.message(3, |m| {
                m.uint(1, mp.id);
                m.uint(2, mp.memory_start);
                m.uint(3, mp.memory_limit);
                m.uint(4, mp.file_offset);
                m.int(5, mp.filename);
                m.int(6, mp.build_id);
                m.bool(7, mp.has_functions);
                m.bool(8, mp.has_filenames);
                m.bool(9, mp.has_line_numbers);
                m.bool(10, mp.has_inline_frames);
            });
        }
        for loc in &self.location {
            w.message(4, |m| {
                m.uint(1, loc.id);
                m.uint(2, loc.mapping_id);
                m.uint(3, loc.address);
                for l in &loc.line {
                    m.message(4, |lm| {
                        lm.uint(1, l.function_id);
                        lm.int(2, l.line);
                    });
                }
            });
        }
        for f in &self.function {
            w.message(5, |m| {
                m.uint(1, f.id);
                m.int(2, f.name);
                m.int(3, f.system_name);
                m.int(4, f.filename);
                m.int(5, f.start_line);
            });
        }
        for s in &self.string_table {
            w.bytes(6, s.as_bytes());
        }
        w.int(9, self.time_nanos);
        w.int(10, self.duration_nanos);
        if let Some(pt) = &self.period_type {
            value_type(&mut w, 11, pt);
        }
        w.int(12, self.period);
        w.packed(13, self.comment.iter().map(|c| *c as u64));
        w.int(14, self.default_sample_type);
        w.buf
    }

    /// Decode a (not gzipped) profile. Unknown fields are skipped, as protobuf requires.
    pub fn decode(data: &[u8]) -> Result<Profile, WireError> {
        let mut p = Profile::default();
        let mut r = Reader::new(data);
        while let Some((field, v)) = r.field()? {
            match field {
                1 => p.sample_type.push(decode_value_type(v.as_bytes()?)?),
                2 => p.sample.push(decode_sample(v.as_bytes()?)?),
                3 => p.mapping.push(decode_mapping(v.as_bytes()?)?),
                4 => p.location.push(decode_location(v.as_bytes()?)?),
                5 => p.function.push(decode_function(v.as_bytes()?)?),
                6 => p
                    .string_table
                    .push(String::from_utf8_lossy(v.as_bytes()?).into_owned()),
                9 => p.time_nanos = v.as_u64()? as i64,
                10 => p.duration_nanos = v.as_u64()? as i64,
                11 => p.period_type = Some(decode_value_type(v.as_bytes()?)?),
                12 => p.period = v.as_u64()? as i64,
                13 => {
                    let mut c = Vec::new();
                    v.push_ints(&mut c)?;
                    p.comment.extend(c.into_iter().map(|x| x as i64));
                }
                14 => p.default_sample_type = v.as_u64()? as i64,
                _ => {}
            }
        }
        Ok(p)
    }

    /// gzip-compressed encoding, as pprof files are stored.
    pub fn write_gz(&self, out: impl Write) -> std::io::Result<()> {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        gz.write_all(&self.encode())?;
        gz.finish()?;
        Ok(())
    }

    /// Read a profile, gzipped or not. Decompressed input is capped at `max_bytes` so a
    /// hostile file cannot exhaust memory.
    pub fn read(bytes: &[u8], max_bytes: u64) -> Result<Profile, String> {
        let raw: std::borrow::Cow<'_, [u8]> = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes)
                .take(max_bytes.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| format!("gunzip: {e}"))?;
            if out.len() as u64 > max_bytes {
                return Err(format!(
                    "profile larger than {max_bytes} bytes uncompressed"
                ));
            }
            out.into()
        } else {
            bytes.into()
        };
        Profile::decode(&raw).map_err(|e| e.to_string())
    }
}

fn each_field<'a>(
    data: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut r = Reader::new(data);
    while let Some((field, v)) = r.field()? {
        f(field, v)?;
    }
    Ok(())
}

fn decode_value_type(data: &[u8]) -> Result<ValueType, WireError> {
    let mut v = ValueType::default();
    each_field(data, |f, x| {
        match f {
            1 => v.ty = x.as_u64()? as i64,
            2 => v.unit = x.as_u64()? as i64,
            _ => {}
        }
        Ok(())
    })?;
    Ok(v)
}

fn decode_sample(data: &[u8]) -> Result<Sample, WireError> {
    let mut s = Sample::default();
    let mut values = Vec::new();
    each_field(data, |f, x| {
        match f {
            1 => x.push_ints(&mut s.location_id)?,
            2 => x.push_ints(&mut values)?,
            3 => {
                let mut l = Label::default();
                each_field(x.as_bytes()?, |f, y| {
                    match f {
                        1 => l.key = y.as_u64()? as i64,
                        2 => l.str = y.as_u64()? as i64,
                        3 => l.num = y.as_u64()? as i64,
                        _ => {}
                    }
                    Ok(())
                })?;
                s.label.push(l);
            }
            _ => {}
        }
        Ok(())
    })?;
    s.value = values.into_iter().map(|v| v as i64).collect();
    Ok(s)
}

fn decode_mapping(data: &[u8]) -> Result<Mapping, WireError> {
    let mut m = Mapping::default();
    each_field(data, |f, x| {
        match f {
            1 => m.id = x.as_u64()?,
            2 => m.memory_start = x.as_u64()?,
            3 => m.memory_limit = x.as_u64()?,
            4 => m.file_offset = x.as_u64()?,
            5 => m.filename = x.as_u64()? as i64,
            6 => m.build_id = x.as_u64()? as i64,
            7 => m.has_functions = x.as_u64()? != 0,
            8 => m.has_filenames = x.as_u64()? != 0,
            9 => m.has_line_numbers = x.as_u64()? != 0,
            10 => m.has_inline_frames = x.as_u64()? != 0,
            _ => {}
        }
        Ok(())
    })?;
    Ok(m)
}

fn decode_location(data: &[u8]) -> Result<Location, WireError> {
    let mut l = Location::default();
    each_field(data, |f, x| {
        match f {
            1 => l.id = x.as_u64()?,
            2 => l.mapping_id = x.as_u64()?,
            3 => l.address = x.as_u64()?,
            4 => {
                let mut line = Line::default();
                each_field(x.as_bytes()?, |f, y| {
                    match f {
                        1 => line.function_id = y.as_u64()?,
                        2 => line.line = y.as_u64()? as i64,
                        _ => {}
                    }
                    Ok(())
                })?;
                l.line.push(line);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(l)
}

fn decode_function(data: &[u8]) -> Result<Function, WireError> {
    let mut func = Function::default();
    each_field(data, |f, x| {
        match f {
            1 => func.id = x.as_u64()?,
            2 => func.name = x.as_u64()? as i64,
            3 => func.system_name = x.as_u64()? as i64,
            4 => func.filename = x.as_u64()? as i64,
            5 => func.start_line = x.as_u64()? as i64,
            _ => {}
        }
        Ok(())
    })?;
    Ok(func)
}
