//! Brendan Gregg's folded-stacks format: `root;...;leaf COUNT`, one stack per line.

use std::io::{self, Write};

/// Make a frame name safe for a folded line: `;` separates frames, so it becomes `:`;
/// control characters (newlines above all) would split a record, so they become spaces.
pub fn escape_frame(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// Process names additionally have spaces replaced by `_`, as stackcollapse-perf does.
pub fn escape_comm(comm: &str) -> String {
    let s = escape_frame(comm.trim());
    let s = s.replace(' ', "_");
    if s.is_empty() {
        "[unknown]".into()
    } else {
        s
    }
}

/// Write `stack count` lines.
pub fn write(out: &mut impl Write, lines: &[(String, u64)]) -> io::Result<()> {
    for (stack, count) in lines {
        writeln!(out, "{stack} {count}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_newlines_are_escaped() {
        assert_eq!(escape_frame("a;b"), "a:b");
        assert_eq!(escape_frame("x\ny\r\tz"), "x y  z");
        assert_eq!(
            escape_frame("std::vector<int>::push_back(int const&)"),
            "std::vector<int>::push_back(int const&)"
        );
        assert_eq!(escape_comm("Web Content"), "Web_Content");
        assert_eq!(escape_comm("a;b c"), "a:b_c");
        assert_eq!(escape_comm(""), "[unknown]");
    }

    #[test]
    fn lines_are_stack_space_count() {
        let mut v = Vec::new();
        write(&mut v, &[("a;b".into(), 3), ("a;c".into(), 1)]).unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), "a;b 3\na;c 1\n");
    }
}
