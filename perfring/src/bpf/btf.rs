//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`, 5.4+ with
//! CONFIG_DEBUG_INFO_BTF) to find where a field lies inside a kernel struct, so a program
//! can read it with `bpf_probe_read`. Struct layouts differ between kernel builds; BTF is
//! the running kernel's own description of them. Without BTF, callers do without the field.
//!
//! Format (include/uapi/linux/btf.h): a header, a type section of variable-length
//! `btf_type` records numbered from 1, and a string section. Everything is read with
//! bounds checks: the file is the kernel's, but nothing here trusts its lengths.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

/// BTF kinds that matter here, and the extra bytes every kind carries after its record.
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const ENUM64: u32 = 19;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const TYPE_TAG: u32 = 18;
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset from the start of the struct.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union, with its members.
    Composite {
        name: u32,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: another type under a qualifier.
    Alias(u32),
    Other,
}

/// The types of one BTF blob, by id, and its strings.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Bytes that follow a type record of `kind` with `vlen` entries.
fn extra(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen.checked_mul(12)?,
        kind::ENUM | kind::FUNC_PROTO => vlen.checked_mul(8)?,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7..=12 | 16 | 18 => 0,
        _ => return None,
    })
}

impl Btf {
    /// The running kernel's BTF, if it publishes one.
    pub fn vmlinux() -> Option<Btf> {
        Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?)
    }

    /// Parse a BTF blob (native endian). `None` if it is not one or is malformed.
    pub fn parse(b: &[u8]) -> Option<Btf> {
        if u16_at(b, 0)? != MAGIC {
            return None;
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            b.get(start..start.checked_add(len)?)
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut btf = Btf {
            // Id 0 is void.
            types: vec![Type::Other],
            strings,
            by_name: HashMap::new(),
        };
        let mut at = 0;
        while at < types.len() {
            let (name, info) = (u32_at(types, at)?, u32_at(types, at + 4)?);
            let (k, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let kind_flag = info >> 31 == 1;
            let body = at + 12;
            let t = match k {
                kind::STRUCT | kind::UNION => {
                    let members = (0..vlen)
                        .map(|i| {
                            let m = body + i * 12;
                            let off = u32_at(types, m + 8)?;
                            Some(Member {
                                name: u32_at(types, m)?,
                                ty: u32_at(types, m + 4)?,
                                bit_offset: if kind_flag { off & 0xff_ffff } else { off },
                            })
                        })
                        .collect::<Option<Vec<_>>>()?;
                    Type::Composite { name, members }
                }
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    Type::Alias(u32_at(types, at + 8)?)
                }
                _ => Type::Other,
            };
            if let Type::Composite { name, .. } = &t {
                let id = btf.types.len() as u32;
                if let Some(n) = btf.str(*name).filter(|n| !n.is_empty()) {
                    btf.by_name.entry(n.to_string()).or_insert(id);
                }
            }
            btf.types.push(t);
            at = body.checked_add(extra(k, vlen)?)?;
        }
        Some(btf)
    }

    fn str(&self, off: u32) -> Option<&str> {
        let s = self.strings.get(off as usize..)?;
        let end = s.iter().position(|&c| c == 0)?;
        std::str::from_utf8(&s[..end]).ok()
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                t => return Some(t),
            }
        }
        None
    }

    /// Byte offset of member `name` of composite type `id`, looking into anonymous struct
    /// and union members; and the member's type.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(usize, u32)> {
        let Type::Composite { members, .. } = self.resolve(id)? else {
            return None;
        };
        for m in members {
            match self.str(m.name) {
                Some(n) if n == name => return Some(((m.bit_offset / 8) as usize, m.ty)),
                Some("") | None if depth < 8 => {
                    if let Some((off, ty)) = self.member(m.ty, name, depth + 1) {
                        return Some(((m.bit_offset / 8) as usize + off, ty));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Byte offset of `path` (`["se", "sum_exec_runtime"]`) inside struct `strukt`.
    pub fn offset_of(&self, strukt: &str, path: &[&str]) -> Option<usize> {
        let mut id = *self.by_name.get(strukt)?;
        let mut total = 0usize;
        for name in path {
            let (off, ty) = self.member(id, name, 0)?;
            total = total.checked_add(off)?;
            id = ty;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `struct inner { u64 a; u64 b; }` and
    /// `struct outer { u32 x; union { u32 y; }; struct inner in; }` (anonymous union at 4).
    fn blob() -> Vec<u8> {
        let strings = b"\0inner\0a\0b\0outer\0x\0y\0in\0u64\0".to_vec();
        let s = |name: &str| -> u32 {
            let pat = format!("\0{name}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut rec = |words: &[u32]| t.extend(words.iter().flat_map(|w| w.to_ne_bytes()));
        // 1: int u64
        rec(&[s("u64"), kind::INT << 24, 8, 64]);
        // 2: struct inner
        rec(&[s("inner"), kind::STRUCT << 24 | 2, 16]);
        rec(&[s("a"), 1, 0]);
        rec(&[s("b"), 1, 64]);
        // 3: anonymous union { u64 y }
        rec(&[0, kind::UNION << 24 | 1, 8]);
        rec(&[s("y"), 1, 0]);
        // 4: typedef inner_t = inner
        rec(&[s("in"), kind::TYPEDEF << 24, 2]);
        // 5: struct outer
        rec(&[s("outer"), kind::STRUCT << 24 | 3, 32]);
        rec(&[s("x"), 1, 0]);
        rec(&[0, 3, 32]);
        rec(&[s("in"), 4, 128]);
        let mut b = Vec::new();
        b.extend(MAGIC.to_ne_bytes());
        b.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend(v.to_ne_bytes());
        }
        b.extend(&t);
        b.extend(&strings);
        b
    }

    #[test]
    fn member_offsets_follow_typedefs_and_anonymous_unions() {
        let btf = Btf::parse(&blob()).expect("parses");
        assert_eq!(btf.offset_of("outer", &["x"]), Some(0));
        assert_eq!(btf.offset_of("outer", &["y"]), Some(4));
        assert_eq!(btf.offset_of("outer", &["in", "b"]), Some(16 + 8));
        assert_eq!(btf.offset_of("outer", &["in", "zz"]), None);
        assert_eq!(btf.offset_of("nothing", &["x"]), None);
    }

    #[test]
    fn malformed_blobs_are_refused() {
        let b = blob();
        assert!(Btf::parse(&b[..30]).is_none());
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(Btf::parse(&bad).is_none());
        // A type section that claims more bytes than the blob has.
        let mut long = b;
        long[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(Btf::parse(&long).is_none());
    }

    #[test]
    fn the_running_kernel_describes_its_task_struct() {
        let Some(btf) = Btf::vmlinux() else {
            eprintln!("no /sys/kernel/btf/vmlinux here: nothing to check");
            return;
        };
        let off = btf.offset_of("task_struct", &["se", "sum_exec_runtime"]);
        assert!(off.is_some_and(|o| o > 0 && o < 16384), "{off:?}");
    }
}
