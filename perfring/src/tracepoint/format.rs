//! The `format` file of one tracepoint: its fields (name, offset, size, signedness) and its
//! `print fmt` line, plus bounds-checked reads of a field out of a RAW payload.

/// A parsed `events/<subsys>/<name>/format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointFormat {
    /// The event name.
    pub name: String,
    /// Its id (`ID:` line).
    pub id: Option<u64>,
    /// Common fields (`common_*`) first, then the event's own, in file order.
    pub fields: Vec<Field>,
    /// The text after `print fmt: ` (empty when the file has none).
    pub print_fmt: String,
}

/// One `field:TYPE NAME; offset:N; size:N; signed:N;` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// The declared type without the name and array suffix, e.g. `char` for `char prev_comm[16]`.
    pub type_name: String,
    /// `Some(n)` for `name[n]` arrays, `Some(0)` for `name[]`.
    pub array_len: Option<usize>,
    /// Byte offset in the payload.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Whether it is signed.
    pub signed: bool,
}

/// Why a format file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// No `name:` line.
    #[error("format file has no `name:` line")]
    MissingName,
    /// No `field:` line.
    #[error("format file declares no fields")]
    NoFields,
    /// A line that does not parse.
    #[error("format line {line}: {reason}: {text:?}")]
    BadLine {
        /// Its number (1-based).
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The line.
        text: String,
    },
}

/// Why a RAW payload could not be decoded with a format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The format lacks a field the decoder needs.
    #[error("tracepoint format has no field `{0}`")]
    MissingField(&'static str),
    /// A field of a size the decoder cannot read.
    #[error("field `{field}` has size {size}, expected one of {expected}")]
    UnexpectedSize {
        /// The field.
        field: String,
        /// Its size.
        size: usize,
        /// The sizes accepted.
        expected: &'static str,
    },
    /// The payload is shorter than the format's fields.
    #[error("RAW payload is {have} bytes, the format needs {need}")]
    Truncated {
        /// Bytes the fields need.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// A value that does not fit the decoded type.
    #[error("field `{field}` value {value} does not fit an i32")]
    OutOfRange {
        /// The field.
        field: String,
        /// Its value.
        value: i64,
    },
}

impl TracepointFormat {
    /// Parses the text of a format file. Unknown lines are ignored (kernels have added
    /// headers over time); a malformed `field:` line is an error because silently skipping
    /// it could shift what a decoder thinks it reads.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim();
            let bad = |reason| FormatError::BadLine {
                line: index + 1,
                reason,
                text: raw_line.chars().take(200).collect(),
            };
            if let Some(rest) = line.strip_prefix("name:") {
                name = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("ID:") {
                id = Some(rest.trim().parse::<u64>().map_err(|_| bad("bad ID"))?);
            } else if let Some(rest) = line.strip_prefix("print fmt:") {
                print_fmt = rest.trim().to_string();
            } else if line.starts_with("field:") || line.starts_with("field ") {
                fields.push(parse_field_line(line).map_err(bad)?);
            }
        }
        let name = name.ok_or(FormatError::MissingName)?;
        if fields.is_empty() {
            return Err(FormatError::NoFields);
        }
        Ok(TracepointFormat {
            name,
            id,
            fields,
            print_fmt,
        })
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub(crate) fn require(&self, name: &'static str) -> Result<&Field, DecodeError> {
        self.field(name).ok_or(DecodeError::MissingField(name))
    }
}

fn parse_field_line(line: &str) -> Result<Field, &'static str> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        // "field:" and "field " (old kernels' special fields) both introduce the declaration.
        if let Some(rest) = part
            .strip_prefix("field:")
            .or_else(|| part.strip_prefix("field "))
        {
            decl = Some(rest.trim());
        } else if let Some(rest) = part.strip_prefix("offset:") {
            offset = Some(rest.trim().parse::<usize>().map_err(|_| "bad offset")?);
        } else if let Some(rest) = part.strip_prefix("size:") {
            size = Some(rest.trim().parse::<usize>().map_err(|_| "bad size")?);
        } else if let Some(rest) = part.strip_prefix("signed:") {
            signed = rest.trim().parse::<u8>().map_err(|_| "bad signed")? != 0;
        }
    }
    let (decl, offset, size) = match (decl, offset, size) {
        (Some(d), Some(o), Some(s)) => (d, o, s),
        _ => return Err("field line lacks field, offset or size"),
    };
    if offset.checked_add(size).is_none() {
        return Err("offset + size overflows");
    }
    let (type_name, name, array_len) = split_declaration(decl)?;
    Ok(Field {
        name,
        type_name,
        array_len,
        offset,
        size,
        signed,
    })
}

/// Splits a C declaration such as `char prev_comm[16]`, `__data_loc char[] name` or
/// `unsigned long *ptr` into (type, name, array length).
fn split_declaration(decl: &str) -> Result<(String, String, Option<usize>), &'static str> {
    let mut rest = decl.trim();
    let mut array_len = None;
    if let Some(stripped) = rest.strip_suffix(']') {
        let open = stripped.rfind('[').ok_or("unbalanced [ in declaration")?;
        let len_text = stripped[open + 1..].trim();
        array_len = Some(if len_text.is_empty() {
            0
        } else {
            len_text.parse::<usize>().map_err(|_| "bad array length")?
        });
        rest = stripped[..open].trim_end();
    }
    // Split after the last separator character; measured in chars because hostile input
    // may use multi-byte whitespace.
    let (at, sep) = rest
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace() || c == '*')
        .ok_or("declaration has no type")?;
    let (type_part, name) = rest.split_at(at + sep.len_utf8());
    let type_part = type_part.trim();
    let name_ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !type_part.is_empty();
    if !name_ok {
        return Err("bad field name");
    }
    Ok((type_part.to_string(), name.to_string(), array_len))
}

impl Field {
    /// The field's bytes inside `data` (the RAW payload starting at `common_type`).
    pub fn bytes<'a>(&self, data: &'a [u8]) -> Result<&'a [u8], DecodeError> {
        let end = self.offset.saturating_add(self.size);
        data.get(self.offset..end).ok_or(DecodeError::Truncated {
            need: end,
            have: data.len(),
        })
    }

    /// Reads an integer field of 1, 2, 4 or 8 bytes in the machine's byte order,
    /// sign-extending when the format says the field is signed.
    pub fn read_i64(&self, data: &[u8]) -> Result<i64, DecodeError> {
        let bytes = self.bytes(data)?;
        let value = match *bytes {
            [a] if self.signed => i64::from(a as i8),
            [a] => i64::from(a),
            [a, b] if self.signed => i64::from(i16::from_ne_bytes([a, b])),
            [a, b] => i64::from(u16::from_ne_bytes([a, b])),
            [a, b, c, d] if self.signed => i64::from(i32::from_ne_bytes([a, b, c, d])),
            [a, b, c, d] => i64::from(u32::from_ne_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_ne_bytes([a, b, c, d, e, f, g, h]),
            _ => return Err(self.size_error("1, 2, 4 or 8")),
        };
        Ok(value)
    }

    /// Like [`Field::read_i64`] but reinterpreted as unsigned: the bit pattern a flag word
    /// needs (a sign-extended `long prev_state` keeps its low bits).
    pub fn read_u64(&self, data: &[u8]) -> Result<u64, DecodeError> {
        self.read_i64(data).map(|v| v as u64)
    }

    pub(crate) fn read_i32(&self, data: &[u8]) -> Result<i32, DecodeError> {
        let value = self.read_i64(data)?;
        i32::try_from(value).map_err(|_| DecodeError::OutOfRange {
            field: self.name.clone(),
            value,
        })
    }

    pub(crate) fn expect_int(&self) -> Result<(), DecodeError> {
        match self.size {
            1 | 2 | 4 | 8 => Ok(()),
            _ => Err(self.size_error("1, 2, 4 or 8")),
        }
    }

    fn size_error(&self, expected: &'static str) -> DecodeError {
        DecodeError::UnexpectedSize {
            field: self.name.clone(),
            size: self.size,
            expected,
        }
    }

    pub(crate) fn end(&self) -> usize {
        self.offset.saturating_add(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_split_into_type_name_and_array() {
        let d = split_declaration("char prev_comm[16]").unwrap();
        assert_eq!(d, ("char".into(), "prev_comm".into(), Some(16)));
        let d = split_declaration("__data_loc char[] name").unwrap();
        assert_eq!(d, ("__data_loc char[]".into(), "name".into(), None));
        let d = split_declaration("unsigned long *ptr").unwrap();
        assert_eq!(d, ("unsigned long *".into(), "ptr".into(), None));
        assert!(split_declaration("justone").is_err());
        assert_eq!(split_declaration("int\u{3000}x").unwrap().1, "x");
        assert!(split_declaration("int x[abc]").is_err());
    }

    #[test]
    fn malformed_field_line_is_an_error_with_its_line_number() {
        let text = "name: x\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n";
        match TracepointFormat::parse(text) {
            Err(FormatError::BadLine { line: 3, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn integer_reads_respect_size_and_sign() {
        let field = |size, signed| Field {
            name: "f".into(),
            type_name: "int".into(),
            array_len: None,
            offset: 1,
            size,
            signed,
        };
        let data = [0u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(field(4, true).read_i64(&data), Ok(-1));
        assert_eq!(field(4, false).read_i64(&data), Ok(0xffff_ffff));
        assert_eq!(field(1, true).read_i64(&data), Ok(-1));
        assert_eq!(field(8, true).read_u64(&data), Ok(u64::MAX));
        assert!(matches!(
            field(3, true).read_i64(&data),
            Err(DecodeError::UnexpectedSize { .. })
        ));
        assert_eq!(
            field(8, true).read_i64(&data[..5]),
            Err(DecodeError::Truncated { need: 9, have: 5 })
        );
    }
}
