//! Differential flame graphs (inferno's differential folding, as Brendan Gregg's
//! difffolded.pl): frames are sized by AFTER and coloured by the change from BEFORE (red
//! grew, blue shrank).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// The differential folded text inferno's flame graph reads: `stack BEFORE AFTER`.
pub fn diff_lines(
    before: &[(String, u64)],
    after: &[(String, u64)],
    normalize: bool,
) -> Vec<String> {
    let mut m: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let (tb, ta): (u64, u64) = (
        before.iter().map(|l| l.1).sum(),
        after.iter().map(|l| l.1).sum(),
    );
    let scale = if normalize && tb > 0 && ta > 0 {
        ta as f64 / tb as f64
    } else {
        1.0
    };
    for (s, c) in before {
        m.entry(s).or_default().0 += (*c as f64 * scale).round() as u64;
    }
    for (s, c) in after {
        m.entry(s).or_default().1 += c;
    }
    m.into_iter()
        .map(|(s, (b, a))| format!("{s} {b} {a}"))
        .collect()
}

/// The differential flame graph of `lines` (from [`diff_lines`]) as SVG.
pub fn write_svg(out: &mut impl Write, lines: &[String], title: &str) -> io::Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.deterministic = true;
    if lines.is_empty() {
        return Err(io::Error::other("both profiles are empty"));
    }
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(|e| io::Error::other(format!("flame graph: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::input::parse_folded;

    #[test]
    fn differential_lines_pair_before_and_after() {
        let before = parse_folded("a;b 10\na;c 5\n").unwrap();
        let after = parse_folded("a;b 2\na;d 7\n\n").unwrap();
        assert_eq!(
            diff_lines(&before, &after, false),
            vec!["a;b 10 2", "a;c 5 0", "a;d 0 7"]
        );
        // Normalized: before scaled to after's total (9/15).
        assert_eq!(
            diff_lines(&before, &after, true),
            vec!["a;b 6 2", "a;c 3 0", "a;d 0 7"]
        );
        assert!(parse_folded("a;b x\n").is_err());
        assert!(parse_folded("nocount\n").is_err());
    }

    /// The hot path moved from `old_hot` to `new_hot`: the SVG must colour the grown frame
    /// red and the shrunk one blue.
    #[test]
    fn changed_hot_path_is_highlighted() {
        let before = parse_folded("p;main;old_hot 90\np;main;other 10\n").unwrap();
        let after = parse_folded("p;main;new_hot 90\np;main;other 10\n").unwrap();
        let mut out = Vec::new();
        write_svg(&mut out, &diff_lines(&before, &after, false), "t").unwrap();
        let svg = String::from_utf8(out).unwrap();
        let fill_of = |name: &str| -> String {
            let i = svg.find(&format!("<title>{name} (")).expect(name);
            let rest = &svg[i..];
            let f = rest.find("fill=\"").unwrap();
            rest[f + 6..].split('"').next().unwrap().to_string()
        };
        let red = fill_of("new_hot");
        let rgb = |c: &str| -> (u32, u32, u32) {
            let v: Vec<u32> = c
                .trim_start_matches("rgb(")
                .trim_end_matches(')')
                .split(',')
                .map(|x| x.trim().parse().unwrap())
                .collect();
            (v[0], v[1], v[2])
        };
        let (r, g, b) = rgb(&red);
        assert!(r > g && r > b, "grown frame should be red: {red}");
        let other = rgb(&fill_of("other"));
        assert_eq!(other.0, other.2, "unchanged frame is neutral: {other:?}");
    }
}
