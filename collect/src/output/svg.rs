//! SVG flame graphs via inferno. Profiles whose lines all end in their kind of time
//! (`psample wall`) get one palette per kind ([`kind_palette`]).

use std::collections::HashMap;
use std::io::{self, Write};

use inferno::flamegraph::color::{Color, PaletteMap};

use super::Labels;

/// Write `lines` (folded, sorted) as an SVG flame graph.
pub fn write(out: &mut impl Write, lines: &[(String, u64)], labels: &Labels) -> io::Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = labels.title.clone();
    opts.count_name = labels.count_name.clone();
    // The folded stacks are already sorted; keep the output reproducible.
    opts.deterministic = true;
    // A wall profile (every line ends in its kind of time) gets one palette per kind.
    let kinds = !lines.is_empty()
        && lines
            .iter()
            .all(|(s, _)| s.rsplit(';').next().and_then(kind_of).is_some());
    let mut palette = kinds.then(|| kind_palette(lines));
    opts.palette_map = palette.as_mut();
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

/// The kind of time a wall line's leaf names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    On,
    Off,
    Runnable,
}

fn kind_of(leaf: &str) -> Option<Kind> {
    match leaf {
        "[on-cpu]" => Some(Kind::On),
        "[runnable]" => Some(Kind::Runnable),
        l if l == "[off-cpu]" || (l.starts_with("[off-cpu:") && l.ends_with(']')) => {
            Some(Kind::Off)
        }
        _ => None,
    }
}

/// Colors per frame name for a profile whose lines end in their kind (`[on-cpu]`,
/// `[off-cpu…]`, `[runnable]`): inferno colors by name, so each function takes the palette
/// of the kind most of its time is — warm for on-CPU, blue for off-CPU, purple for
/// runnable — with a shade from its name, as flamegraph.pl's palettes do. The leaves are
/// always their kind's color. Frames shared by all kinds near the root (the thread, `main`)
/// take the biggest kind's.
pub fn kind_palette(lines: &[(String, u64)]) -> PaletteMap {
    let mut by_name: HashMap<&str, [u64; 3]> = HashMap::new();
    for (stack, count) in lines {
        let Some(kind) = stack.rsplit(';').next().and_then(kind_of) else {
            continue;
        };
        let mut seen: Vec<&str> = Vec::new();
        for frame in stack.split(';') {
            // Recursion: a name counts once per line.
            if seen.contains(&frame) {
                continue;
            }
            seen.push(frame);
            let e = by_name.entry(frame).or_default();
            e[kind as usize] = e[kind as usize].saturating_add(*count);
        }
    }
    let mut map = PaletteMap::default();
    for (name, t) in by_name {
        let kind = match kind_of(name) {
            Some(k) => k,
            None if t[1] >= t[0] && t[1] >= t[2] => Kind::Off,
            None if t[0] >= t[2] => Kind::On,
            None => Kind::Runnable,
        };
        map.insert(name, shade(kind, name));
    }
    map
}

/// A color of `kind`'s palette, shaded by a hash of `name` (stable across runs).
fn shade(kind: Kind, name: &str) -> Color {
    // FNV-1a: cheap, and the same on every platform and run.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let v = |shift: u32| ((h >> shift) & 0xff) as f64 / 255.0;
    let (v1, v2, v3) = (v(0), v(8), v(16));
    let c = |x: f64| x.clamp(0.0, 255.0) as u8;
    match kind {
        // flamegraph.pl's "hot".
        Kind::On => Color {
            r: c(205.0 + 50.0 * v3),
            g: c(230.0 * v1),
            b: c(55.0 * v2),
        },
        // flamegraph.pl's "io" (blue).
        Kind::Off => {
            let r = c(80.0 + 60.0 * v1);
            Color {
                r,
                g: r,
                b: c(190.0 + 55.0 * v2),
            }
        }
        Kind::Runnable => Color {
            r: c(160.0 + 50.0 * v1),
            g: c(90.0 + 40.0 * v2),
            b: c(200.0 + 55.0 * v3),
        },
    }
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

    #[test]
    fn wall_frames_take_the_palette_of_their_main_kind() {
        let lines: Vec<(String, u64)> = vec![
            ("app;main;compute;[on-cpu]".into(), 40),
            ("app;main;sleep;schedule_[k];[off-cpu:S]".into(), 60),
            ("app;main;compute;schedule_[k];[runnable]".into(), 5),
        ];
        let map = kind_palette(&lines);
        let blue = |c: Color| c.b >= 190 && c.r == c.g;
        let warm = |c: Color| c.r >= 205 && c.b <= 55;
        let purple = |c: Color| c.r >= 160 && c.b >= 200 && c.g < c.r;
        assert!(warm(map.get("compute").unwrap()));
        assert!(warm(map.get("[on-cpu]").unwrap()));
        assert!(blue(map.get("sleep").unwrap()));
        assert!(blue(map.get("[off-cpu:S]").unwrap()));
        assert!(blue(map.get("main").unwrap()), "60 of 105 is off-CPU");
        assert!(purple(map.get("[runnable]").unwrap()));
        // schedule_[k]: 60 off-CPU, 5 runnable.
        assert!(blue(map.get("schedule_[k]").unwrap()));
        let labels = Labels {
            title: "psample wall".into(),
            count_name: "ns".into(),
            extra: Vec::new(),
        };
        let mut out = Vec::new();
        write(&mut out, &lines, &labels).unwrap();
        let svg = String::from_utf8(out).unwrap();
        let c = map.get("[runnable]").unwrap();
        assert!(svg.contains(&format!("rgb({},{},{})", c.r, c.g, c.b)));
    }
}
