//! `psample report FILE`: a text summary for hosts without a browser — total, the heaviest
//! stacks, and the functions with the most self time (leaf frames) and total time.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use crate::args::ReportArgs;
use collect::Error as CliError;

fn pct(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

/// The report text for folded lines.
pub fn render(lines: &[(String, u64)], top: usize) -> String {
    let total: u64 = lines.iter().map(|l| l.1).sum();
    let mut out = String::new();
    let _ = writeln!(out, "total: {total} in {} distinct stacks", lines.len());

    let mut stacks: Vec<&(String, u64)> = lines.iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = writeln!(out, "\ntop stacks:");
    for (s, c) in stacks.iter().take(top).map(|l| (&l.0, l.1)) {
        let _ = writeln!(out, "{c:>12} {:>6.2}%  {s}", pct(c, total));
    }

    let mut own: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cum: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (s, c) in lines {
        // Skip the thread name (first frame) for function statistics.
        let frames: Vec<&str> = s.split(';').skip(1).collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_insert(0) += c;
        }
        seen.clear();
        for f in &frames {
            // Recursion must not count a stack twice for the same function.
            if seen.insert(f) {
                *cum.entry(f).or_insert(0) += c;
            }
        }
    }
    let table = |title: &str, m: &BTreeMap<&str, u64>, out: &mut String| {
        let mut v: Vec<(&str, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(out, "\n{title}:");
        for (f, c) in v.into_iter().take(top) {
            let _ = writeln!(out, "{c:>12} {:>6.2}%  {f}", pct(c, total));
        }
    };
    table("top functions by self time", &own, &mut out);
    table("top functions by total time", &cum, &mut out);
    out
}

pub fn run(args: ReportArgs) -> Result<i32, CliError> {
    let lines = collect::output::input::load_folded(&args.file).map_err(CliError::new)?;
    collect::out!("{}", render(&lines, args.top.max(1)));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_and_total_time_are_attributed() {
        let lines = vec![
            ("app;main;work;leaf".to_string(), 6),
            ("app;main;work".to_string(), 2),
            ("app;main;rec;rec".to_string(), 2),
        ];
        let r = render(&lines, 2);
        assert!(r.starts_with("total: 10 in 3 distinct stacks\n"), "{r}");
        let section = |name: &str| -> Vec<String> {
            r.split(&format!("\n{name}:\n"))
                .nth(1)
                .unwrap()
                .split("\n\n")
                .next()
                .unwrap()
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(
            section("top stacks"),
            vec!["6 60.00% app;main;work;leaf", "2 20.00% app;main;rec;rec"]
        );
        assert_eq!(
            section("top functions by self time"),
            vec!["6 60.00% leaf", "2 20.00% rec"]
        );
        // rec appears twice in its stack but counts once; main is in every stack.
        assert_eq!(
            section("top functions by total time"),
            vec!["10 100.00% main", "8 80.00% work"]
        );
    }
}
