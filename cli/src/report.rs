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

    let mut own: BTreeMap<String, u64> = BTreeMap::new();
    let mut cum: BTreeMap<&str, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (s, c) in lines {
        // Skip the thread name (first frame) for function statistics.
        let mut frames: Vec<&str> = s.split(';').skip(1).collect();
        // A wall profile's leaf is its kind of time: self time is the frame under it's,
        // per kind.
        let kind = frames.last().copied().filter(|l| is_kind(l));
        if let Some(k) = kind {
            frames.pop();
            *kinds.entry(k).or_insert(0) += c;
        }
        if let Some(leaf) = frames.last() {
            let name = match kind {
                Some(k) => format!("{leaf} {k}"),
                None => leaf.to_string(),
            };
            *own.entry(name).or_insert(0) += c;
        }
        seen.clear();
        for f in &frames {
            // Recursion must not count a stack twice for the same function.
            if seen.insert(f) {
                *cum.entry(f).or_insert(0) += c;
            }
        }
    }
    if !kinds.is_empty() {
        let _ = writeln!(out, "\nby kind of time:");
        for (k, c) in &kinds {
            let _ = writeln!(out, "{c:>12} {:>6.2}%  {k}", pct(*c, total));
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
    let own: BTreeMap<&str, u64> = own.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    table("top functions by self time", &own, &mut out);
    table("top functions by total time", &cum, &mut out);
    out
}

/// A `psample wall` leaf: `[on-cpu]`, `[off-cpu]`, `[off-cpu:S]`…, `[runnable]`.
fn is_kind(frame: &str) -> bool {
    frame == "[on-cpu]" || frame == "[runnable]" || frame.starts_with("[off-cpu")
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
        assert!(!r.contains("by kind of time"), "{r}");
        // rec appears twice in its stack but counts once; main is in every stack.
        assert_eq!(
            section("top functions by total time"),
            vec!["10 100.00% main", "8 80.00% work"]
        );
    }

    #[test]
    fn wall_profiles_report_self_time_per_kind() {
        let lines = vec![
            ("app;main;spin;[on-cpu]".to_string(), 40),
            ("app;main;sleep;schedule_[k];[off-cpu]".to_string(), 50),
            ("app;main;spin;schedule_[k];[runnable]".to_string(), 10),
        ];
        let r = render(&lines, 3);
        let norm: Vec<String> = r
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for want in [
            "40 40.00% [on-cpu]",
            "50 50.00% schedule_[k] [off-cpu]",
            "10 10.00% schedule_[k] [runnable]",
            "40 40.00% spin [on-cpu]",
            // Kind leaves are not functions.
            "60 60.00% schedule_[k]",
        ] {
            assert!(norm.iter().any(|l| l == want), "no {want:?} in\n{r}");
        }
    }
}
