//! The end-of-run summary: what was collected, what was lost, which fallbacks ran. The
//! text on stderr ([`Summary::render`]) and the JSON of `--summary-json`
//! ([`Summary::to_json`]) come from the same data: every line added here is kept as text,
//! and the numbers behind the lines scripts care about (samples, lost records, unwinding,
//! push results, the command's exit status) are kept as typed facts beside them.

use perfring::event::Session;
use serde_json::{json, Map, Value};

use crate::launch::ExitStatus;
use crate::session;
use crate::stack::{StackBuilder, StackMode, UnwindStats};

/// Broken user stacks (in percent) above which the summary advises DWARF mode.
const BROKEN_ADVICE_PCT: f64 = 5.0;

/// The summary of one session: `key value` lines, fallbacks, warnings.
pub struct Summary {
    command: &'static str,
    lines: Vec<(String, String)>,
    /// Typed values behind the lines, for `--summary-json`.
    facts: Map<String, Value>,
    /// How a launched command (`-- CMD`) ended, when it did.
    pub command_status: Option<ExitStatus>,
    /// Printed after the lines, one `psample: warning:` each.
    pub warnings: Vec<String>,
    /// Also list every kernel feature and its support.
    pub verbose: bool,
    fallbacks: Vec<String>,
    features: Vec<String>,
}

impl Summary {
    /// An empty summary of `command`.
    pub fn new(command: &'static str) -> Self {
        Summary {
            command,
            lines: Vec::new(),
            facts: Map::new(),
            command_status: None,
            warnings: Vec::new(),
            verbose: false,
            fallbacks: Vec::new(),
            features: Vec::new(),
        }
    }

    /// Add a `key value` line.
    pub fn line(&mut self, key: &str, value: impl Into<String>) {
        self.lines.push((key.to_string(), value.into()));
    }

    /// Record a typed value for `--summary-json` (`samples`, `lost`, `push`…); a later
    /// fact of the same key replaces it.
    pub fn fact(&mut self, key: &str, value: impl Into<Value>) {
        self.facts.insert(key.to_string(), value.into());
    }

    /// The command this summary is of (`record`, `offcpu`).
    pub fn command(&self) -> &str {
        self.command
    }

    /// A typed value recorded with [`Self::fact`].
    pub fn get_fact(&self, key: &str) -> Option<&Value> {
        self.facts.get(key)
    }

    /// Lost records per ring: always reported, never silent.
    pub fn add_lost(&mut self, session: &Session, parse_errors: u64) {
        let stats = session.ring_stats();
        let lost: u64 = stats.iter().map(|(_, s)| s.lost_records).sum();
        let lost_samples: u64 = stats.iter().map(|(_, s)| s.lost_samples).sum();
        let corrupt: u64 = stats.iter().map(|(_, s)| s.corrupt).sum();
        let mut v = format!("{lost} records");
        if lost_samples > 0 {
            v.push_str(&format!(", {lost_samples} samples dropped by the kernel"));
        }
        if corrupt > 0 || parse_errors > 0 {
            v.push_str(&format!(", {} malformed", corrupt + parse_errors));
        }
        let per_cpu: Map<String, Value> = stats
            .iter()
            .filter(|(_, s)| s.lost_records > 0)
            .map(|(cpu, s)| (cpu.to_string(), json!(s.lost_records)))
            .collect();
        let held = session.drained_peak();
        self.fact(
            "lost",
            json!({
                "records": lost,
                "samples_dropped_by_kernel": lost_samples,
                "malformed": corrupt + parse_errors,
                "per_cpu": per_cpu,
                "held_outside_rings_peak_bytes": held,
            }),
        );
        if held > 0 {
            v.push_str(&format!(
                " (the reader fell behind: up to {:.1} MiB held outside the rings)",
                held as f64 / f64::from(1 << 20)
            ));
        }
        if lost > 0 {
            let per_cpu: Vec<String> = stats
                .iter()
                .filter(|(_, s)| s.lost_records > 0)
                .map(|(cpu, s)| format!("cpu{cpu}: {}", s.lost_records))
                .collect();
            v.push_str(&format!(
                " ({}; use a larger --mmap-pages or a lower -F)",
                per_cpu.join(", ")
            ));
        }
        self.line("lost", v);
    }

    /// The `unwinding` line: completeness of the user stacks unwound, and the top reasons they stopped short.
    pub fn add_unwind(&mut self, u: &UnwindStats) {
        let pct = if u.samples > 0 {
            100.0 * u.complete as f64 / u.samples as f64
        } else {
            0.0
        };
        let mut v = format!(
            "{pct:.1}% complete ({} of {} user stacks reach a thread entry)",
            u.complete, u.samples
        );
        let mut reasons: Vec<(&String, &u64)> = u.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        if !reasons.is_empty() {
            let top: Vec<String> = reasons
                .iter()
                .take(3)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            v.push_str(&format!("; truncated by: {}", top.join(", ")));
        }
        self.line("unwinding", v);
        self.fact(
            "unwinding",
            json!({
                "user_stacks": u.samples,
                "complete": u.complete,
                "complete_percent": (pct * 10.0).round() / 10.0,
                "truncated_by": u.reasons,
            }),
        );
    }

    /// Per call-graph mode: how user stacks were unwound (DWARF, hybrid) and, in every mode,
    /// their health, with advice when many are broken.
    pub fn add_stacks(&mut self, b: &StackBuilder) {
        match b.mode {
            StackMode::Fp => {}
            StackMode::Dwarf(_) => self.add_unwind(&b.unwind_stats),
            StackMode::Auto(size) => self.add_hybrid(b, size),
        }
        let h = &b.health;
        if h.stacks == 0 {
            return;
        }
        let pct = |n: u64| 100.0 * n as f64 / h.stacks as f64;
        let mut v = format!(
            "{:.1}% of {} user stacks broken: {:.1}% ended outside any executable mapping, \
             {:.1}% stopped at the sampled address",
            h.broken_pct(),
            h.stacks,
            pct(h.outside),
            pct(h.ip_only)
        );
        if let StackMode::Auto(size) = b.mode {
            v.push_str(&format!(
                ", {:.1}% cut at the end of the {size}-byte stack copy",
                pct(h.cut)
            ));
        }
        self.line("stack health", v);
        self.fact(
            "stack_health",
            json!({
                "user_stacks": h.stacks,
                "broken_percent": (h.broken_pct() * 10.0).round() / 10.0,
                "outside_executable_mappings": h.outside,
                "stopped_at_sampled_address": h.ip_only,
                "cut_at_stack_copy_end": h.cut,
            }),
        );
        if !matches!(b.mode, StackMode::Dwarf(_)) && h.broken_pct() > BROKEN_ADVICE_PCT {
            self.warnings.push(format!(
                "{:.0}% of user stacks are broken: code built without frame pointers is on \
                 them (as in most distribution packages); --call-graph dwarf unwinds such \
                 stacks completely, at the cost of a 16 KiB stack copy per sample",
                h.broken_pct()
            ));
        }
    }

    fn add_hybrid(&mut self, b: &StackBuilder, size: u32) {
        let h = &b.hybrid_stats;
        let n = h.stacks();
        if n == 0 {
            if h.no_copy > 0 {
                let v = format!("no stack copies: {} frame-pointer stacks as is", h.no_copy);
                self.line("hybrid", v);
            }
            return;
        }
        let pct = |k: u64| 100.0 * k as f64 / n as f64;
        let mut v = format!(
            "leaf frames fixed in {:.1}% of stacks ({} frames the frame-pointer chain lacked, \
             {} of its entries dropped); spliced {:.1}%, DWARF only {:.1}%, \
             frame pointers only {:.1}%, unanchored {:.1}%",
            pct(h.fixed),
            h.recovered,
            h.dropped,
            pct(h.spliced),
            pct(h.dwarf_only),
            pct(h.kernel_only),
            pct(h.unanchored)
        );
        if self.verbose {
            if let Some(p99) = h.used_p99() {
                v.push_str(&format!("; 99% of splices needed <= {p99} of {size} bytes"));
            }
        }
        if h.no_copy > 0 {
            v.push_str(&format!("; {} samples without a stack copy", h.no_copy));
        }
        self.line("hybrid", v);
    }

    /// The fallbacks the session's ladder took, and every feature's support (verbose).
    pub fn add_fallbacks(&mut self, s: &Session) {
        self.fallbacks = session::fallbacks(s);
        self.features = perfring::features::Feature::ALL
            .iter()
            .map(|f| format!("{}={:?}", f.name(), s.ladder.support(*f)))
            .collect();
    }

    /// The summary as JSON: the command, every line's text under `lines`, the typed facts
    /// at the top level, fallbacks, warnings, and what psample's symbolizer left out.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("command".into(), json!(self.command));
        for (k, v) in &self.facts {
            o.insert(k.clone(), v.clone());
        }
        if let Some(s) = self.command_status {
            o.insert("command_exit".into(), exit_json(s));
        }
        o.insert("fallbacks".into(), json!(self.fallbacks));
        if self.verbose {
            o.insert("features".into(), json!(self.features));
        }
        o.insert("budget".into(), json!(symbolize::budget::report()));
        o.insert("warnings".into(), json!(self.warnings));
        let lines: Vec<Value> = self
            .lines
            .iter()
            .map(|(k, v)| json!({"key": k.trim(), "value": v}))
            .collect();
        o.insert("lines".into(), Value::Array(lines));
        Value::Object(o)
    }

    /// The summary as the command line prints it: a heading, aligned `key  value` lines,
    /// the fallbacks (and when verbose every feature), then the warnings.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let width = self.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let _ = writeln!(out, "psample {}:", self.command);
        for (k, v) in &self.lines {
            let _ = writeln!(out, "  {k:width$}  {v}");
        }
        if self.fallbacks.is_empty() {
            let _ = writeln!(out, "  {:width$}  none", "fallbacks");
        } else {
            let _ = writeln!(
                out,
                "  {:width$}  {}",
                "fallbacks",
                self.fallbacks.join("; ")
            );
        }
        if self.verbose {
            let _ = writeln!(out, "  {:width$}  {}", "features", self.features.join(" "));
        }
        // What profiled processes made psample leave out (symbolize::budget), if anything.
        for line in symbolize::budget::report() {
            let _ = writeln!(out, "  {:width$}  {line}", "budget");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "psample: warning: {w}");
        }
        out
    }
}

/// `{"status": 3}`, `{"signal": 9, "status": 137}`.
fn exit_json(s: ExitStatus) -> Value {
    match s {
        ExitStatus::Exited(c) => json!({"code": c, "status": c, "describe": s.describe()}),
        ExitStatus::Signaled(n) => {
            json!({"signal": n, "status": 128 + n, "describe": s.describe()})
        }
        ExitStatus::Unknown => json!({"status": null, "describe": s.describe()}),
    }
}
