//! SVG flame graphs via inferno.

use std::io::{self, Write};

use super::Labels;

/// Write `lines` (folded, sorted) as an SVG flame graph.
pub fn write(out: &mut impl Write, lines: &[(String, u64)], labels: &Labels) -> io::Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = labels.title.clone();
    opts.count_name = labels.count_name.clone();
    // The folded stacks are already sorted; keep the output reproducible.
    opts.deterministic = true;
    let text: Vec<String> = lines.iter().map(|(s, c)| format!("{s} {c}")).collect();
    if text.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid (empty) result.
        return writeln!(
            out,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="30" text-anchor="middle">{}: no samples</text></svg>"#,
            labels.title
        );
    }
    inferno::flamegraph::from_lines(&mut opts, text.iter().map(String::as_str), out)
        .map_err(|e| io::Error::other(format!("flame graph: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_produced_for_folded_input() {
        let mut out = Vec::new();
        let labels = Labels {
            title: "t".into(),
            count_name: "samples".into(),
            extra: Vec::new(),
        };
        write(&mut out, &[("prog;main;work".into(), 5)], &labels).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("<svg"));
        assert!(s.contains("work"));
    }
}
