//! Recorded unwind fixtures: a process's maps text, the module files it mapped, and
//! captured (registers, stack bytes) samples. Used by the benchmark and tests so they run
//! against committed binaries rather than whatever the host has installed.
//!
//! Sample file layout (little endian): magic `PSUWFX02`, u32 count, then per sample
//! u32 tid, u64 ip, u64 sp, u64 bp, u32 len, `len` stack bytes, u32 n, `n` u64 entries of
//! the kernel's user callchain (frame pointers; IP first, raw return addresses). Version
//! `PSUWFX01` files are the same without the callchain.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{FileResolver, Mapping, Processes, UserRegs};

const MAGIC_V1: &[u8; 8] = b"PSUWFX01";
const MAGIC: &[u8; 8] = b"PSUWFX02";
/// perf never copies more than this much user stack per sample.
const MAX_STACK: usize = 65528;
/// Longest callchain kept (the kernel's own limit, perf_event_max_stack, is far lower).
const MAX_CHAIN: usize = crate::MAX_FRAMES;

/// One recorded sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixtureSample {
    /// The thread sampled.
    pub tid: u32,
    /// Registers at the sample point.
    pub regs: UserRegs,
    /// The copied user stack, from the stack pointer up.
    pub stack: Vec<u8>,
    /// The kernel's frame-pointer callchain of the user stack for the same sample (empty
    /// when not recorded).
    pub chain: Vec<u64>,
}

/// Serialize samples in the fixture format.
pub fn encode_samples(samples: &[FixtureSample]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    for s in samples {
        let len = s.stack.len().min(MAX_STACK);
        out.extend_from_slice(&s.tid.to_le_bytes());
        for v in [s.regs.ip, s.regs.sp, s.regs.bp] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&s.stack[..len]);
        let chain = &s.chain[..s.chain.len().min(MAX_CHAIN)];
        out.extend_from_slice(&(chain.len() as u32).to_le_bytes());
        for v in chain {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Parse the fixture format; `None` on any truncation or inconsistency.
pub fn decode_samples(bytes: &[u8]) -> Option<Vec<FixtureSample>> {
    let (mut rest, with_chain) = match bytes.strip_prefix(MAGIC) {
        Some(rest) => (rest, true),
        None => (bytes.strip_prefix(MAGIC_V1)?, false),
    };
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let u32_of = |b: &[u8]| Some(u32::from_le_bytes(b.try_into().ok()?));
    let u64_of = |b: &[u8]| Some(u64::from_le_bytes(b.try_into().ok()?));
    let count = u32_of(take(4)?)?;
    let mut samples = Vec::new();
    for _ in 0..count {
        let tid = u32_of(take(4)?)?;
        let ip = u64_of(take(8)?)?;
        let sp = u64_of(take(8)?)?;
        let bp = u64_of(take(8)?)?;
        let len = usize::try_from(u32_of(take(4)?)?).ok()?;
        if len > MAX_STACK {
            return None;
        }
        let stack = take(len)?.to_vec();
        let mut chain = Vec::new();
        if with_chain {
            let n = usize::try_from(u32_of(take(4)?)?).ok()?;
            if n > MAX_CHAIN {
                return None;
            }
            for _ in 0..n {
                chain.push(u64_of(take(8)?)?);
            }
        }
        samples.push(FixtureSample {
            tid,
            regs: UserRegs { ip, sp, bp },
            stack,
            chain,
        });
    }
    Some(samples)
}

/// A loaded fixture directory: `maps.txt`, `samples.bin`, and module files named by the
/// basename of their mapped path.
pub struct Fixture {
    /// The fixture directory.
    pub dir: PathBuf,
    /// The process the samples were taken from.
    pub pid: u32,
    /// Its address space, from `maps.txt`, resolving files in `dir`.
    pub processes: Processes,
    /// The samples.
    pub samples: Vec<FixtureSample>,
}

impl Fixture {
    /// Load the fixture in `dir`.
    pub fn load(dir: &Path) -> std::io::Result<Fixture> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let maps = std::fs::read(dir.join("maps.txt"))?;
        let samples = decode_samples(&std::fs::read(dir.join("samples.bin"))?)
            .ok_or_else(|| invalid("bad samples.bin"))?;
        let pid = samples
            .first()
            .map(|s| s.tid)
            .ok_or_else(|| invalid("no samples"))?;
        let mut processes = Processes::new();
        processes.load_maps_text(pid, &String::from_utf8_lossy(&maps));
        Ok(Fixture {
            dir: dir.to_path_buf(),
            pid,
            processes,
            samples,
        })
    }

    /// A resolver that opens only files committed with the fixture, never host files,
    /// so a host libc update cannot change results.
    pub fn resolver(&self) -> FileResolver {
        let dir = self.dir.clone();
        Box::new(move |_pid: u32, mapping: &Mapping| -> Option<File> {
            let name = Path::new(&mapping.path).file_name()?;
            File::open(dir.join(name)).ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let samples = vec![FixtureSample {
            tid: 7,
            regs: UserRegs {
                ip: 1,
                sp: 2,
                bp: 3,
            },
            stack: vec![9; 24],
            chain: vec![1, 0x4010, 0x4020],
        }];
        let bytes = encode_samples(&samples);
        assert_eq!(decode_samples(&bytes), Some(samples));
        for cut in 0..bytes.len() {
            assert!(decode_samples(&bytes[..cut]).is_none(), "cut {cut}");
        }
        let mut huge = bytes.clone();
        // Claim a stack longer than perf can produce.
        let len_at = 8 + 4 + 4 + 24;
        huge[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_samples(&huge).is_none());
        // And a callchain longer than any kernel's.
        let mut long = bytes.clone();
        let n_at = len_at + 4 + 24;
        long[n_at..n_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_samples(&long).is_none());
    }

    #[test]
    fn version_1_files_decode_without_chains() {
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&7u32.to_le_bytes());
        for v in [1u64, 2, 3] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        v1.extend_from_slice(&8u32.to_le_bytes());
        v1.extend_from_slice(&[5; 8]);
        let samples = decode_samples(&v1).expect("v1 decodes");
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].stack, vec![5; 8]);
        assert!(samples[0].chain.is_empty());
    }
}
