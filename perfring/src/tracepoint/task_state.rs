//! What `sched_switch`'s `prev_state` means on the running kernel.
//!
//! The encoding changed several times: 2.6.x–4.13 record the raw `p->state` bits with
//! `TASK_STATE_MAX` OR'd in for a preemption (1024 on 3.10, 2048 from 4.2); 4.14+ record one
//! `TASK_REPORT` bit with `TASK_REPORT_MAX` for a preemption; bit values moved (Z and X swapped,
//! I appeared). The format file's `print fmt` carries the table the kernel itself uses to print
//! the state — the `__print_flags(REC->prev_state & MASK, "|", { bit, "letter" }, …)` list and
//! the `REC->prev_state & BIT ? "+" : ""` preemption marker — so the decoder reads both from
//! there and interprets bits by letter, never by fixed value.

/// A task's state at switch-out, as decoded from `prev_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Still runnable: preempted (the "+" marker) or switched out while running (yield).
    Runnable,
    /// `S`: interruptible sleep.
    Interruptible,
    /// `D`: uninterruptible sleep (including `TASK_KILLABLE`, which is D plus K).
    Uninterruptible,
    /// `I`, or `D` with the `N` (no-load) bit: an idle kernel-thread wait.
    Idle,
    /// `T`: stopped by a signal.
    Stopped,
    /// `t`: stopped by a tracer.
    Traced,
    /// `P`: a parked kernel thread.
    Parked,
    /// `X`, `Z` or `x`: the task's final switch-out; it never runs again.
    Dead,
    /// Bits the kernel's own table does not name; the raw `prev_state` value.
    Other(u64),
}

impl TaskState {
    /// The letter `ps` and perf use, or `?` for [`TaskState::Other`].
    pub fn letter(self) -> char {
        match self {
            TaskState::Runnable => 'R',
            TaskState::Interruptible => 'S',
            TaskState::Uninterruptible => 'D',
            TaskState::Idle => 'I',
            TaskState::Stopped => 'T',
            TaskState::Traced => 't',
            TaskState::Parked => 'P',
            TaskState::Dead => 'X',
            TaskState::Other(_) => '?',
        }
    }

    /// The state a `/proc/PID/task/TID/stat` letter names (for threads found blocked at start).
    pub fn from_proc_letter(letter: char) -> TaskState {
        match letter {
            'R' => TaskState::Runnable,
            'S' => TaskState::Interruptible,
            'D' => TaskState::Uninterruptible,
            'I' => TaskState::Idle,
            'T' => TaskState::Stopped,
            't' => TaskState::Traced,
            'P' => TaskState::Parked,
            'X' | 'x' | 'Z' => TaskState::Dead,
            other => TaskState::Other(u64::from(other)),
        }
    }
}

/// Where a [`StateTable`] came from, so a command can say when it had to guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateTableSource {
    /// Read from the format's `print fmt`.
    PrintFmt,
    /// The print fmt had no recognisable `__print_flags` table for `prev_state`; S=1, D=2
    /// and no preemption marker are assumed (true for every mainline kernel's low bits).
    Assumed,
}

/// The `prev_state` decoding table of one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTable {
    /// Bits passed to `__print_flags`; zero after masking means running.
    mask: u64,
    /// The bit that marks a preemption (`"+"`), when the kernel has one.
    preempt_bit: Option<u64>,
    flags: Vec<(u64, char)>,
    source: StateTableSource,
}

impl StateTable {
    /// Builds the table from a `sched_switch` print fmt, falling back to
    /// [`StateTableSource::Assumed`] when the text has no usable table.
    pub fn from_print_fmt(print_fmt: &str) -> StateTable {
        parse_table(print_fmt).unwrap_or_else(StateTable::assumed)
    }

    fn assumed() -> StateTable {
        StateTable {
            mask: u64::MAX,
            preempt_bit: None,
            flags: vec![(1, 'S'), (2, 'D')],
            source: StateTableSource::Assumed,
        }
    }

    /// Where the table came from.
    pub fn source(&self) -> StateTableSource {
        self.source
    }

    /// The state a raw `prev_state` value stands for.
    pub fn decode(&self, raw: u64) -> TaskState {
        if self.preempt_bit.is_some_and(|bit| raw & bit != 0) {
            return TaskState::Runnable;
        }
        let masked = raw & self.mask;
        if masked == 0 {
            return TaskState::Runnable;
        }
        let has = |letter: char| {
            self.flags
                .iter()
                .any(|&(bits, l)| l == letter && bits != 0 && masked & bits == bits)
        };
        // Order matters: TASK_KILLABLE is D|K, old TASK_IDLE is D|N, a dying task may keep
        // other bits — the most specific meaning wins.
        if has('X') || has('Z') || has('x') {
            TaskState::Dead
        } else if has('D') {
            if has('N') {
                TaskState::Idle
            } else {
                TaskState::Uninterruptible
            }
        } else if has('I') {
            TaskState::Idle
        } else if has('S') {
            TaskState::Interruptible
        } else if has('T') {
            TaskState::Stopped
        } else if has('t') {
            TaskState::Traced
        } else if has('P') {
            TaskState::Parked
        } else {
            TaskState::Other(raw)
        }
    }
}

fn parse_table(print_fmt: &str) -> Option<StateTable> {
    let args = split_top_level(print_fmt, ',');
    let mut table = None;
    let mut preempt_bit = None;
    for arg in args.iter().skip(1) {
        if let Some(call) = find_call(arg, "__print_flags") {
            let call_args = split_top_level(call, ',');
            let mask = state_mask(call_args.first()?)?;
            let mut flags = Vec::new();
            for flag in call_args.iter().skip(2) {
                flags.push(parse_flag(flag)?);
            }
            table = Some((mask, flags));
        } else if let Some((cond, then)) = arg.split_once('?') {
            if then.trim_start().starts_with("\"+\"") {
                preempt_bit = Some(state_mask(cond)?);
            }
        }
    }
    let (mask, flags) = table?;
    if !flags.iter().any(|&(_, l)| l == 'S') || !flags.iter().any(|&(_, l)| l == 'D') {
        return None;
    }
    Some(StateTable {
        mask,
        preempt_bit,
        flags,
        source: StateTableSource::PrintFmt,
    })
}

/// The text inside `name( … )` within `arg`, if present and balanced.
fn find_call<'a>(arg: &'a str, name: &str) -> Option<&'a str> {
    let start = arg.find(name)? + name.len();
    let rest = arg[start..].trim_start();
    let inner = rest.strip_prefix('(')?;
    let mut depth = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&inner[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits at `sep` outside strings, parentheses and braces.
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            c if c == sep && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `REC->prev_state` or `REC->prev_state & EXPR` (optionally parenthesised) → the mask.
fn state_mask(cond: &str) -> Option<u64> {
    let mut cond = cond.trim();
    while let Some(inner) = strip_outer_parens(cond) {
        cond = inner.trim();
    }
    let rest = cond.strip_prefix("REC->prev_state")?.trim_start();
    if rest.is_empty() {
        return Some(u64::MAX);
    }
    let expr = rest.strip_prefix('&')?;
    const_expr::evaluate(expr)
}

fn strip_outer_parens(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    // "(a) & (b)" starts and ends with parens that are not a pair.
    let mut depth = 0i64;
    for c in inner.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    (depth == 0).then_some(inner)
}

/// `{ 0x0001, "S" }` → (1, 'S').
fn parse_flag(flag: &str) -> Option<(u64, char)> {
    let inner = flag.trim().strip_prefix('{')?.strip_suffix('}')?;
    let (value, name) = inner.split_once(',')?;
    let name = name.trim().strip_prefix('"')?.strip_suffix('"')?;
    let mut letters = name.chars();
    let letter = letters.next()?;
    if letters.next().is_some() {
        return None;
    }
    Some((const_expr::evaluate(value)?, letter))
}

/// Evaluates the integer constant expressions the kernel leaves in print fmts after macro
/// expansion, e.g. `((((0x0000 | 0x0001) + 1) << 1) - 1)` or `(2048-1)`.
mod const_expr {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Token {
        Num(u64),
        Op(&'static str),
        Open,
        Close,
    }

    pub(super) fn evaluate(text: &str) -> Option<u64> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
        };
        let value = parser.binary(0)?;
        (parser.pos == parser.tokens.len()).then_some(value)
    }

    fn tokenize(text: &str) -> Option<Vec<Token>> {
        const OPS: [&str; 10] = ["<<", ">>", "|", "&", "^", "+", "-", "*", "/", "~"];
        let bytes = text.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii_whitespace() {
                i += 1;
            } else if b == b'(' {
                tokens.push(Token::Open);
                i += 1;
            } else if b == b')' {
                tokens.push(Token::Close);
                i += 1;
            } else if b.is_ascii_digit() {
                let start = i;
                while bytes.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
                    i += 1;
                }
                tokens.push(Token::Num(parse_number(text.get(start..i)?)?));
            } else {
                let rest = text.get(i..)?;
                let op = OPS.iter().find(|op| rest.starts_with(**op))?;
                tokens.push(Token::Op(op));
                i += op.len();
            }
            if tokens.len() > 4096 {
                return None;
            }
        }
        Some(tokens)
    }

    fn parse_number(text: &str) -> Option<u64> {
        let digits = text.trim_end_matches(['u', 'U', 'l', 'L']);
        if let Some(hex) = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
        {
            u64::from_str_radix(hex, 16).ok()
        } else {
            digits.parse().ok()
        }
    }

    struct Parser {
        tokens: Vec<Token>,
        pos: usize,
        /// Parentheses and unary operators currently open; bounded so hostile input cannot
        /// exhaust the stack.
        depth: usize,
    }

    /// C precedence, loosest first.
    const LEVELS: [&[&str]; 6] = [
        &["|"],
        &["^"],
        &["&"],
        &["<<", ">>"],
        &["+", "-"],
        &["*", "/"],
    ];

    impl Parser {
        fn binary(&mut self, level: usize) -> Option<u64> {
            let Some(ops) = LEVELS.get(level) else {
                return self.unary();
            };
            let mut left = self.binary(level + 1)?;
            while let Some(Token::Op(op)) = self.tokens.get(self.pos).copied() {
                if !ops.contains(&op) {
                    break;
                }
                self.pos += 1;
                let right = self.binary(level + 1)?;
                left = match op {
                    "|" => left | right,
                    "^" => left ^ right,
                    "&" => left & right,
                    "<<" => left.checked_shl(u32::try_from(right).ok()?)?,
                    ">>" => left.checked_shr(u32::try_from(right).ok()?)?,
                    "+" => left.wrapping_add(right),
                    "-" => left.wrapping_sub(right),
                    "*" => left.wrapping_mul(right),
                    "/" => left.checked_div(right)?,
                    _ => return None,
                };
            }
            Some(left)
        }

        fn unary(&mut self) -> Option<u64> {
            if self.depth > 64 {
                return None;
            }
            let token = *self.tokens.get(self.pos)?;
            self.pos += 1;
            self.depth += 1;
            let value = match token {
                Token::Num(n) => Some(n),
                Token::Op("~") => self.unary().map(|v| !v),
                Token::Op("-") => self.unary().map(u64::wrapping_neg),
                Token::Op("+") => self.unary(),
                Token::Open => {
                    let value = self.binary(0)?;
                    (self.tokens.get(self.pos) == Some(&Token::Close)).then(|| {
                        self.pos += 1;
                        value
                    })
                }
                _ => None,
            };
            self.depth -= 1;
            value
        }
    }

    #[cfg(test)]
    mod tests {
        use super::evaluate;

        #[test]
        fn kernel_expressions() {
            assert_eq!(evaluate("(1024-1)"), Some(1023));
            assert_eq!(evaluate(" 2048"), Some(2048));
            let report = "(0x0000 | 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0010 | 0x0020 | 0x0040)";
            assert_eq!(
                evaluate(&format!("(((({report}) + 1) << 1) - 1)")),
                Some(0xff)
            );
            assert_eq!(evaluate(&format!("((({report}) + 1) << 1)")), Some(0x100));
            assert_eq!(evaluate("1 + 2 * 3"), Some(7));
            assert_eq!(evaluate("~0UL & 0xf"), Some(0xf));
        }

        #[test]
        fn rejects_what_it_cannot_evaluate() {
            assert_eq!(evaluate("TASK_STATE_MAX"), None);
            assert_eq!(evaluate("1 << 64"), None);
            assert_eq!(evaluate("1 / 0"), None);
            assert_eq!(evaluate("(1"), None);
            assert_eq!(evaluate("1 2"), None);
            assert_eq!(evaluate(""), None);
            assert_eq!(evaluate(&"(".repeat(10_000)), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_strings_and_nesting() {
        let parts = split_top_level(r#""a,b", f(x, y), { 1, "," }"#, ',');
        assert_eq!(parts, vec![r#""a,b""#, " f(x, y)", r#" { 1, "," }"#]);
    }

    #[test]
    fn no_table_falls_back_to_assumed_bits() {
        let table = StateTable::from_print_fmt(r#""prev_state=%ld", REC->prev_state"#);
        assert_eq!(table.source(), StateTableSource::Assumed);
        assert_eq!(table.decode(0), TaskState::Runnable);
        assert_eq!(table.decode(1), TaskState::Interruptible);
        assert_eq!(table.decode(2), TaskState::Uninterruptible);
        assert_eq!(table.decode(1 << 20), TaskState::Other(1 << 20));
    }
}
