//! Reading and clearing a hash map while programs keep writing to it.

use super::error::{self, BpfError};
use super::maps::Map;

/// A map entry's key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Takes every entry out of a hash map, atomically per key where the kernel can
/// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM` on hash maps, 5.14+), else by lookup then delete.
#[derive(Debug)]
pub struct HashDrain {
    /// Whether the atomic command works here; cleared at its first refusal.
    atomic: bool,
}

impl Default for HashDrain {
    fn default() -> Self {
        HashDrain { atomic: true }
    }
}

impl HashDrain {
    /// Every (key, value) of `map`, each removed from it. A key added while this runs is
    /// either taken now or left for the next call.
    pub fn take(&mut self, map: &Map, what: &'static str) -> Result<Vec<Entry>, BpfError> {
        let keys = map
            .keys()
            .map_err(|e| error::syscall("bpf(BPF_MAP_GET_NEXT_KEY)", e))?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut value = vec![0u8; map.value_size()];
            let found = if self.atomic {
                match map.lookup_and_delete(&key, &mut value) {
                    Ok(found) => found,
                    // Hash maps refuse this command before 5.14, and not always with a
                    // standard errno: 5.10 returns the kernel-internal ENOTSUPP (524), seen
                    // under QEMU on Debian's 5.10. Any refusal means "use lookup + delete" for
                    // the rest of the run; a real failure then shows up on that path.
                    Err(_) => {
                        self.atomic = false;
                        lookup_then_delete(map, &key, &mut value, what)?
                    }
                }
            } else {
                lookup_then_delete(map, &key, &mut value, what)?
            };
            if found {
                out.push((key, value));
            }
        }
        Ok(out)
    }
}

/// Pre-5.14: increments landing between the two calls are lost (a handful per drain at
/// most).
fn lookup_then_delete(
    map: &Map,
    key: &[u8],
    value: &mut [u8],
    what: &'static str,
) -> Result<bool, BpfError> {
    let found = map
        .lookup(key, value)
        .map_err(|e| error::syscall(what, e))?;
    if found {
        map.delete(key).map_err(|e| error::syscall(what, e))?;
    }
    Ok(found)
}

/// A native-endian u32 at `at`, if `bytes` is long enough.
pub fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

/// A native-endian u64 at `at`, if `bytes` is long enough.
pub fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}
