//! Owned BPF maps with size-checked element operations.
//!
//! The raw syscalls take pointers; every buffer handed to them here is checked against the
//! key and value sizes the map was created with, so a wrong-sized slice is an error value
//! instead of a kernel read or write past its end.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::sys;

/// A map created by this process. Dropping it closes the fd; the kernel frees the map once
/// no program references it either.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
}

impl Map {
    /// Create a map (BPF_MAP_CREATE).
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> Result<Map, Errno> {
        let fd = sys::map_create(map_type, key_size, value_size, max_entries, name)?;
        Ok(Map {
            fd,
            key_size: key_size as usize,
            value_size: value_size as usize,
            max_entries,
        })
    }

    /// Bytes per key.
    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// Bytes per value.
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    /// Most entries it holds.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// Its fd, for the program's map references.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn check(&self, key: &[u8], value: Option<usize>) -> Result<(), Errno> {
        if key.len() != self.key_size || value.is_some_and(|v| v != self.value_size) {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `Ok(false)` when the key is absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, Errno> {
        self.check(key, Some(value.len()))?;
        // SAFETY: sizes checked against the map's key/value sizes.
        match unsafe { sys::map_lookup(self.fd.as_fd(), key.as_ptr(), value.as_mut_ptr()) } {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// BPF_MAP_UPDATE_ELEM with `flags` (`update::*`).
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), Errno> {
        self.check(key, Some(value.len()))?;
        // SAFETY: sizes checked.
        unsafe { sys::map_update(self.fd.as_fd(), key.as_ptr(), value.as_ptr(), flags) }
    }

    /// `Ok(false)` when the key was already gone.
    pub fn delete(&self, key: &[u8]) -> Result<bool, Errno> {
        self.check(key, None)?;
        // SAFETY: size checked.
        match unsafe { sys::map_delete(self.fd.as_fd(), key.as_ptr()) } {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Atomic lookup-and-delete where the kernel has it (hash maps, 5.14+). `Err(ENOTSUP)`
    /// tells the caller to fall back to lookup then delete.
    pub fn lookup_and_delete(&self, key: &[u8], value: &mut [u8]) -> Result<bool, Errno> {
        self.check(key, Some(value.len()))?;
        // SAFETY: sizes checked.
        match unsafe {
            sys::map_lookup_and_delete(self.fd.as_fd(), key.as_ptr(), value.as_mut_ptr())
        } {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            // 524 is the kernel-internal ENOTSUPP, which leaks to user space here; nix has no
            // name for it and reports UnknownErrno (whose value is 0, not 524).
            Err(Errno::EINVAL | Errno::ENOTSUP | Errno::UnknownErrno) => Err(Errno::ENOTSUP),
            Err(e) => Err(e),
        }
    }

    /// The key after `key` (the first key for `None`); `Ok(false)` at the end.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool, Errno> {
        if next.len() != self.key_size {
            return Err(Errno::EINVAL);
        }
        if let Some(k) = key {
            self.check(k, None)?;
        }
        let key_ptr = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
        // SAFETY: sizes checked; a null key asks for the first element.
        match unsafe { sys::map_get_next_key(self.fd.as_fd(), key_ptr, next.as_mut_ptr()) } {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            // Before 4.12 a null key is EFAULT; starting from a key that cannot be in the map
            // (all 0xff for our layouts) returns the first key instead.
            Err(Errno::EFAULT) if key.is_none() => {
                let absent = vec![0xffu8; self.key_size];
                // SAFETY: sizes checked.
                match unsafe {
                    sys::map_get_next_key(self.fd.as_fd(), absent.as_ptr(), next.as_mut_ptr())
                } {
                    Ok(()) => Ok(true),
                    Err(Errno::ENOENT) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Snapshot of all keys. Concurrent inserts by the program may or may not appear; a
    /// hash map restarts iteration from the beginning when the current key vanishes, so the
    /// walk is capped to avoid looping forever under churn.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, Errno> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cur = vec![0u8; self.key_size];
        let mut have = self.next_key(None, &mut cur)?;
        let cap = (self.max_entries as usize).saturating_mul(2).max(16);
        let mut steps = 0usize;
        while have && steps < cap {
            steps += 1;
            if seen.insert(cur.clone()) {
                keys.push(cur.clone());
            }
            let mut next = vec![0u8; self.key_size];
            have = self.next_key(Some(&cur), &mut next)?;
            cur = next;
        }
        Ok(keys)
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
