//! Decoders for the scheduler tracepoints off-CPU analysis needs: `sched_switch` and the
//! `sched_wakeup` family (`sched_wakeup`, `sched_wakeup_new`, `sched_waking` share a layout).
//!
//! A decoder is built once per format (field lookups, size checks and the state table happen
//! there) so that decoding a sample is a handful of bounds-checked loads with no allocation.

use super::format::{DecodeError, Field, TracepointFormat};
use super::task_state::{StateTable, TaskState};

/// A task's `comm` as the kernel stored it: up to 16 bytes, NUL-terminated if shorter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// The NUL-terminated name in `raw` (at most 16 bytes).
    pub fn new(raw: &[u8]) -> Comm {
        let end = raw
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.len())
            .min(16);
        let mut bytes = [0u8; 16];
        bytes[..end].copy_from_slice(&raw[..end]);
        Comm {
            bytes,
            len: end as u8,
        }
    }

    /// The bytes up to the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// As text (invalid UTF-8 replaced).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// One decoded `sched:sched_switch` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedSwitch {
    /// Name of the task leaving the CPU.
    pub prev_comm: Comm,
    /// Its tid.
    pub prev_pid: i32,
    /// Its priority (when the format has it).
    pub prev_prio: Option<i32>,
    /// The state it leaves in.
    pub prev_state: TaskState,
    /// The `prev_state` word as recorded, for diagnostics.
    pub prev_state_raw: u64,
    /// Name of the task coming in.
    pub next_comm: Comm,
    /// Its tid.
    pub next_pid: i32,
    /// Its priority (when the format has it).
    pub next_prio: Option<i32>,
}

/// Decodes `sched_switch` RAW payloads for one kernel's format.
#[derive(Debug, Clone)]
pub struct SchedSwitchDecoder {
    prev_comm: Field,
    prev_pid: Field,
    prev_prio: Option<Field>,
    prev_state: Field,
    next_comm: Field,
    next_pid: Field,
    next_prio: Option<Field>,
    states: StateTable,
    min_len: usize,
}

impl SchedSwitchDecoder {
    /// A decoder for this kernel's `sched_switch` format.
    pub fn new(format: &TracepointFormat) -> Result<Self, DecodeError> {
        let int = |name| -> Result<Field, DecodeError> {
            let field = format.require(name)?;
            field.expect_int()?;
            Ok(field.clone())
        };
        let optional_int = |name| {
            format
                .field(name)
                .filter(|f| f.expect_int().is_ok())
                .cloned()
        };
        let decoder = SchedSwitchDecoder {
            prev_comm: format.require("prev_comm")?.clone(),
            prev_pid: int("prev_pid")?,
            prev_prio: optional_int("prev_prio"),
            prev_state: int("prev_state")?,
            next_comm: format.require("next_comm")?.clone(),
            next_pid: int("next_pid")?,
            next_prio: optional_int("next_prio"),
            states: StateTable::from_print_fmt(&format.print_fmt),
            min_len: 0,
        };
        let min_len = [
            &decoder.prev_comm,
            &decoder.prev_pid,
            &decoder.prev_state,
            &decoder.next_comm,
            &decoder.next_pid,
        ]
        .iter()
        .map(|f| f.end())
        .max()
        .unwrap_or(0);
        Ok(SchedSwitchDecoder { min_len, ..decoder })
    }

    /// How `prev_state` values are read on this kernel.
    pub fn state_table(&self) -> &StateTable {
        &self.states
    }

    /// Decodes the tracepoint record (the RAW data after its u32 size, starting at
    /// `common_type`). Trailing padding is ignored; a short payload is an error.
    pub fn decode(&self, data: &[u8]) -> Result<SchedSwitch, DecodeError> {
        if data.len() < self.min_len {
            return Err(DecodeError::Truncated {
                need: self.min_len,
                have: data.len(),
            });
        }
        let prev_state_raw = self.prev_state.read_u64(data)?;
        Ok(SchedSwitch {
            prev_comm: Comm::new(self.prev_comm.bytes(data)?),
            prev_pid: self.prev_pid.read_i32(data)?,
            prev_prio: read_optional(&self.prev_prio, data),
            prev_state: self.states.decode(prev_state_raw),
            prev_state_raw,
            next_comm: Comm::new(self.next_comm.bytes(data)?),
            next_pid: self.next_pid.read_i32(data)?,
            next_prio: read_optional(&self.next_prio, data),
        })
    }
}

/// One decoded `sched_wakeup` / `sched_wakeup_new` / `sched_waking` payload: the task woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedWakeup {
    /// Name of the task woken.
    pub comm: Comm,
    /// Its tid.
    pub pid: i32,
    /// Its priority (when the format has it).
    pub prio: Option<i32>,
    /// Before 4.3 the tracepoint also fired for wakeups that found the task already running
    /// (`success == 0`); those woke nothing. `None` when the field no longer exists (5.14+).
    pub success: Option<bool>,
    /// The CPU it will run on (when the format has it).
    pub target_cpu: Option<i32>,
}

/// Decodes the `sched_wakeup` family's RAW payloads for one kernel's format.
#[derive(Debug, Clone)]
pub struct SchedWakeupDecoder {
    comm: Field,
    pid: Field,
    prio: Option<Field>,
    success: Option<Field>,
    target_cpu: Option<Field>,
    min_len: usize,
}

impl SchedWakeupDecoder {
    /// A decoder for this kernel's `sched_wakeup` format.
    pub fn new(format: &TracepointFormat) -> Result<Self, DecodeError> {
        let pid = format.require("pid")?;
        pid.expect_int()?;
        let optional_int = |name| {
            format
                .field(name)
                .filter(|f| f.expect_int().is_ok())
                .cloned()
        };
        let comm = format.require("comm")?.clone();
        Ok(SchedWakeupDecoder {
            min_len: comm.end().max(pid.end()),
            comm,
            pid: pid.clone(),
            prio: optional_int("prio"),
            success: optional_int("success"),
            target_cpu: optional_int("target_cpu"),
        })
    }

    /// Decode one RAW payload.
    pub fn decode(&self, data: &[u8]) -> Result<SchedWakeup, DecodeError> {
        if data.len() < self.min_len {
            return Err(DecodeError::Truncated {
                need: self.min_len,
                have: data.len(),
            });
        }
        Ok(SchedWakeup {
            comm: Comm::new(self.comm.bytes(data)?),
            pid: self.pid.read_i32(data)?,
            prio: read_optional(&self.prio, data),
            success: self
                .success
                .as_ref()
                .and_then(|f| f.read_i64(data).ok())
                .map(|v| v != 0),
            target_cpu: read_optional(&self.target_cpu, data),
        })
    }
}

/// Optional fields may be cut off by a short payload without making the required ones wrong.
fn read_optional(field: &Option<Field>, data: &[u8]) -> Option<i32> {
    field.as_ref().and_then(|f| f.read_i32(data).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_nul_and_caps_at_16() {
        assert_eq!(Comm::new(b"bash\0junk").as_bytes(), b"bash");
        assert_eq!(Comm::new(&[b'a'; 40]).as_bytes(), &[b'a'; 16]);
        assert_eq!(Comm::new(b"").as_bytes(), b"");
        assert_eq!(Comm::new(b"\xffx").to_string_lossy(), "\u{fffd}x");
    }
}
