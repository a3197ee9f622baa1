//! Parsing `/proc/PID/maps` text. The text is untrusted (another process can be mid-exec,
//! paths may contain spaces or newlines-turned-`\012`), so malformed lines are skipped rather
//! than failing the whole file.

/// One well-formed line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedMapLine {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// `p` (private, copy-on-write) vs `s` (shared).
    pub private: bool,
    /// File offset of `start`.
    pub pgoff: u64,
    /// Device major number of the file.
    pub dev_major: u32,
    /// Device minor number of the file.
    pub dev_minor: u32,
    /// Inode of the file (0 for anonymous mappings).
    pub inode: u64,
    /// Path, pseudo-name (`[vdso]`, `[stack]`) or empty for anonymous memory. A trailing
    /// ` (deleted)` is kept: it tells the file opener to go through `map_files`.
    pub path: String,
}

impl ParsedMapLine {
    /// `(major, minor, inode)` for file-backed lines, `None` for anonymous/pseudo mappings.
    pub fn inode_triple(&self) -> Option<(u32, u32, u64)> {
        (self.inode != 0).then_some((self.dev_major, self.dev_minor, self.inode))
    }
}

/// Parse a whole maps file; lines that do not parse are dropped.
pub fn parse_maps(text: &str) -> Vec<ParsedMapLine> {
    text.lines().filter_map(parse_line).collect()
}

fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let trimmed = rest.trim_start_matches(' ');
    let end = trimmed.find(' ').unwrap_or(trimmed.len());
    let (field, tail) = trimmed.split_at(end);
    *rest = tail;
    (!field.is_empty()).then_some(field)
}

fn parse_line(line: &str) -> Option<ParsedMapLine> {
    let mut rest = line;
    let range = next_field(&mut rest)?;
    let perms = next_field(&mut rest)?.as_bytes();
    let offset = next_field(&mut rest)?;
    let dev = next_field(&mut rest)?;
    let inode = next_field(&mut rest)?;
    let path = rest.trim_start_matches(' ').to_string();

    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start || perms.len() != 4 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    Some(ParsedMapLine {
        start,
        end,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        private: perms[3] == b'p',
        pgoff: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c2a00000-55d0c2a01000 r--p 00000000 fe:01 1234                       /usr/bin/my prog
55d0c2a01000-55d0c2a02000 r-xp 00001000 fe:01 1234                       /usr/bin/my prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1000000000-7f1000001000 r-xp 00002000 103:02 99 /tmp/lib.so (deleted)
7ffd1000000-7ffd1002000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_paths_with_spaces_anon_and_deleted() {
        let lines = parse_maps(SAMPLE);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1].path, "/usr/bin/my prog");
        assert!(lines[1].exec && lines[1].private && !lines[1].write);
        assert_eq!(lines[1].pgoff, 0x1000);
        assert_eq!(lines[1].inode_triple(), Some((0xfe, 1, 1234)));
        assert_eq!(lines[2].path, "");
        assert_eq!(lines[2].inode_triple(), None);
        assert_eq!(lines[3].path, "/tmp/lib.so (deleted)");
        assert_eq!((lines[3].dev_major, lines[3].dev_minor), (0x103, 2));
        assert_eq!(lines[4].path, "[vdso]");
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let text = "zz-10 r-xp 0 0:0 0 x\n10-5 r-xp 0 0:0 0 x\n\n10-20 rw 0 0:0 0\n\
                    10-20 r-xp 0 00 0 x\n10-20 r-xp 0 0:0 -1 x\n10-20 r-xp\n\u{0}\u{ff}\n\
                    10-20 r-xp 0 0:0 7 /ok\n";
        let lines = parse_maps(text);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].path, "/ok");
    }
}
