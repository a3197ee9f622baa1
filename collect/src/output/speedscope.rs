//! speedscope's JSON file format (<https://www.speedscope.app/file-format-schema.json>), for
//! `--format speedscope` or `-o NAME.json`: opened by speedscope (and the Firefox Profiler's
//! importer), as py-spy's output is.
//!
//! Written from the folded lines: one "sampled" profile per name in the stacks' first
//! frame (the thread's comm: one profile for a single-threaded process, one per thread
//! name otherwise), heaviest first, its stacks root first below that name. A folded line is
//! one sample with its count as weight, so the file is as small as the folded text. Frame
//! names are shared between profiles in `shared.frames`.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

use super::Labels;

/// The whole file.
#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    exporter: String,
    name: &'a str,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    shared: Shared<'a>,
    profiles: Vec<Profile<'a>>,
}

#[derive(Serialize)]
struct Shared<'a> {
    frames: Vec<Frame<'a>>,
}

#[derive(Serialize)]
struct Frame<'a> {
    name: &'a str,
}

/// One thread name's samples.
#[derive(Serialize)]
struct Profile<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: u64,
    #[serde(rename = "endValue")]
    end_value: u64,
    samples: Vec<Vec<usize>>,
    weights: Vec<u64>,
}

/// speedscope's unit for psample's count name: offcpu counts microseconds, record samples.
fn unit(count_name: &str) -> &'static str {
    match count_name {
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "ms" => "milliseconds",
        _ => "none",
    }
}

/// Write `lines` (folded `stack count`, root first) as a speedscope file.
pub fn write(out: &mut dyn Write, lines: &[(String, u64)], labels: &Labels) -> io::Result<()> {
    let unit = unit(&labels.count_name);
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let mut frame_index: HashMap<&str, usize> = HashMap::new();
    let mut profiles: Vec<Profile<'_>> = Vec::new();
    let mut profile_index: HashMap<&str, usize> = HashMap::new();
    for (stack, count) in lines {
        let mut parts = stack.split(';');
        let thread = parts.next().unwrap_or_default();
        let mut path: Vec<&str> = parts.collect();
        if path.is_empty() {
            // A sample with no frame but its thread: keep it visible under that name.
            path.push(thread);
        }
        let sample: Vec<usize> = path
            .into_iter()
            .map(|name| {
                *frame_index.entry(name).or_insert_with(|| {
                    frames.push(Frame { name });
                    frames.len() - 1
                })
            })
            .collect();
        let i = *profile_index.entry(thread).or_insert_with(|| {
            profiles.push(Profile {
                kind: "sampled",
                name: thread,
                unit,
                start_value: 0,
                end_value: 0,
                samples: Vec::new(),
                weights: Vec::new(),
            });
            profiles.len() - 1
        });
        let p = &mut profiles[i];
        p.samples.push(sample);
        p.weights.push(*count);
        p.end_value = p.end_value.saturating_add(*count);
    }
    // Heaviest first (speedscope opens the first); ties by name, so output is stable.
    profiles.sort_by(|a, b| b.end_value.cmp(&a.end_value).then(a.name.cmp(b.name)));
    let file = File {
        schema: "https://www.speedscope.app/file-format-schema.json",
        exporter: format!("psample {}", env!("CARGO_PKG_VERSION")),
        name: &labels.title,
        active_profile_index: 0,
        shared: Shared { frames },
        profiles,
    };
    serde_json::to_writer(&mut *out, &file).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_weighted_profile_per_thread_name_with_shared_frames() {
        let lines = vec![
            ("app;main;work;\"quoted\"\\".to_string(), 7),
            ("app;main;idle".to_string(), 2),
            ("worker;run;work".to_string(), 10),
            ("lonely".to_string(), 1),
        ];
        let labels = Labels {
            title: "Off-CPU".into(),
            count_name: "us".into(),
            extra: Vec::new(),
        };
        let mut v = Vec::new();
        write(&mut v, &lines, &labels).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let frames: Vec<&str> = doc["shared"]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            frames,
            ["main", "work", "\"quoted\"\\", "idle", "run", "lonely"]
        );
        let p = doc["profiles"].as_array().unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0]["name"], "worker");
        assert_eq!(p[0]["endValue"], 10);
        assert_eq!(p[0]["samples"], serde_json::json!([[4, 1]]));
        assert_eq!(p[1]["name"], "app");
        assert_eq!(p[1]["unit"], "microseconds");
        assert_eq!(p[1]["samples"], serde_json::json!([[0, 1, 2], [0, 3]]));
        assert_eq!(p[1]["weights"], serde_json::json!([7, 2]));
        assert_eq!(p[1]["endValue"], 9);
        assert_eq!(p[2]["samples"], serde_json::json!([[5]]));
        assert_eq!(doc["activeProfileIndex"], 0);
    }
}
