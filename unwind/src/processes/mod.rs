//! Address spaces of all profiled processes, maintained from `/proc/PID/maps` and from the
//! kernel's MMAP/MMAP2, FORK, COMM(exec) and EXIT records.

mod retired;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use std::hash::{Hash, Hasher};

use symbolize::budget::{self, CODE_MAPPINGS_LIVE_MAX, CODE_MAPPINGS_LIVE_PER_PROCESS};
use symbolize::identity::ProcessIdentity;

use crate::code_order::CodeOrder;
use crate::maps::{parse_maps, ParsedMapLine};
use retired::{IdRanges, Retired};

/// Index of a [`Mapping`] in the [`Processes`] arena. Stable for the lifetime of the
/// `Processes` value, even after the mapping is unmapped, so frames can be recorded as
/// `(MappingId, addr)` and symbolized later.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MappingId(pub u32);

/// One mapped range of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// File offset of `start`.
    pub pgoff: u64,
    /// The mapped file's path, or a name such as `[vdso]` (empty when anonymous).
    pub path: String,
    /// Executable (code; only code mappings can be in a stack).
    pub exec: bool,
    /// `(major, minor, inode)` of the backing file when known.
    pub inode: Option<(u32, u32, u64)>,
    /// GNU build-id when the kernel reported it (MMAP2 with PERF_RECORD_MISC_MMAP_BUILD_ID).
    pub build_id: Option<Vec<u8>>,
    /// First process this mapping was seen in; identical mappings in other processes share it.
    pub pid: u32,
    /// Start time of `pid` ([`ProcessIdentity`]) for per-process code (anonymous/JIT memory,
    /// deleted files), whose names come from that very process (its JIT map, its
    /// map_files): a later process with the same PID must not be asked. `None` for
    /// mappings shared by file range, and when the process was gone before it was read.
    pub pid_start: Option<u64>,
}

impl Mapping {
    fn same_identity(&self, other: &Mapping) -> bool {
        self.start == other.start
            && self.end == other.end
            && self.pgoff == other.pgoff
            && self.exec == other.exec
            && self.inode == other.inode
            && self.path == other.path
            && self.build_id == other.build_id
            && self.owner() == other.owner()
    }

    fn identity_hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (self.start, self.end, self.pgoff, self.exec, self.inode).hash(&mut h);
        self.path.hash(&mut h);
        self.build_id.hash(&mut h);
        self.owner().hash(&mut h);
        h.finish()
    }

    /// The process per-process code belongs to; `None` for mappings any process may share.
    fn owner(&self) -> Option<(u32, Option<u64>)> {
        FileRange::of(self)
            .is_none()
            .then_some((self.pid, self.pid_start))
    }

    /// Code that only means something in the process that mapped it: anonymous/JIT memory
    /// and deleted or unidentified files.
    fn per_process_code(&self) -> bool {
        self.exec && FileRange::of(self).is_none()
    }
}

/// What makes mappings in different processes the same code: the same file bytes at the same
/// offset and length. ASLR places them at different addresses in every process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FileRange {
    path: String,
    /// `None` only for the vDSO.
    inode: Option<(u32, u32, u64)>,
    pgoff: u64,
    len: u64,
    build_id: Option<Vec<u8>>,
}

impl FileRange {
    /// Executable, inode-identified file mappings, and the vDSO (the kernel maps the same
    /// image into every process of an ABI; its length tells the 64- and 32-bit ones apart).
    /// Anonymous and JIT memory and deleted files are per process.
    fn of(m: &Mapping) -> Option<FileRange> {
        if !m.exec {
            return None;
        }
        if m.path == "[vdso]" {
            return Some(FileRange {
                path: m.path.clone(),
                inode: None,
                pgoff: 0,
                len: m.end - m.start,
                build_id: None,
            });
        }
        // Anonymous memory arrives from MMAP2 records as "//anon" with inode 0: per process
        // (a JIT's code must never be named from another process's map).
        let inode = m.inode.filter(|&(_, _, ino)| ino != 0)?;
        let file = m.path.starts_with('/') && !m.path.starts_with("//");
        (file && !m.path.ends_with(" (deleted)")).then(|| FileRange {
            path: m.path.clone(),
            inode: Some(inode),
            pgoff: m.pgoff,
            len: m.end - m.start,
            build_id: m.build_id.clone(),
        })
    }
}

/// One process's current view of memory. `incarnation` changes whenever the space is
/// replaced (exec, pid reuse after exit, maps reload) so per-process caches elsewhere can
/// tell a stale view from a live one; `exec_version` changes whenever the set of executable
/// mappings changes.
#[derive(Clone, Debug)]
pub(crate) struct AddressSpace {
    pub(crate) incarnation: u64,
    pub(crate) exec_version: u64,
    maps: BTreeMap<u64, MappingId>,
    /// The process's start time, read from /proc when its first per-process code is mapped.
    start_time: Option<Option<u64>>,
    /// Its executable mappings, oldest first (bounded: the kernel reports no munmap).
    code: CodeOrder,
}

/// An arena slot: the mapping, the first mapping of the same file range (see
/// [`FileRange`]), and how many address spaces currently contain it.
struct Entry {
    mapping: Mapping,
    canon: MappingId,
    spaces: u32,
}

/// All processes' address spaces, with mappings interned in one arena.
///
/// Bounded under process churn: a mapping that no address space contains any more is freed
/// unless it is canonical code (the first of its file range or the first vDSO, which frames
/// refer to through [`Processes::canonical`]) or per-process code (anonymous/JIT, deleted
/// files, which frames refer to directly). Kept code is bounded too (module `retired`):
/// beyond its budget the least recently unmapped is evicted. Ids are never reused, so a
/// stale id is simply unknown. A process holds at most [`CODE_MAPPINGS_LIVE_MAX`]
/// mappings; further ones are not tracked.
#[derive(Default)]
pub struct Processes {
    /// `arena` and `spaces` are read on every frame unwound or symbolized: a fast hasher
    /// (keys are our own ids and the kernel's pids).
    arena: FxHashMap<MappingId, Entry>,
    next_id: u32,
    by_file_range: HashMap<FileRange, MappingId>,
    by_identity: HashMap<u64, Vec<MappingId>>,
    spaces: FxHashMap<u32, AddressSpace>,
    next_stamp: u64,
    removals: u64,
    retired: Retired,
    evicted_anon: IdRanges,
    evicted: u64,
    untracked: u64,
    dropped_live: u64,
}

impl Processes {
    /// No address space yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace `pid`'s address space with the contents of `/proc/PID/maps`.
    pub fn load_proc_maps(&mut self, pid: u32) -> std::io::Result<()> {
        let bytes = std::fs::read(format!("/proc/{pid}/maps"))?;
        self.load_maps_text(pid, &String::from_utf8_lossy(&bytes));
        Ok(())
    }

    /// Replace `pid`'s address space with the given maps text (same format as
    /// `/proc/PID/maps`); used for recorded fixtures and by [`Self::load_proc_maps`].
    pub fn load_maps_text(&mut self, pid: u32, text: &str) {
        let space = self.fresh_space();
        self.replace_space(pid, Some(space));
        for line in parse_maps(text) {
            self.insert_line(pid, &line);
        }
    }

    fn insert_line(&mut self, pid: u32, line: &ParsedMapLine) {
        self.on_mmap(
            pid,
            line.start,
            line.end - line.start,
            line.pgoff,
            &line.path,
            line.exec,
            line.inode_triple(),
            None,
        );
    }

    /// Pure parser for `/proc/PID/maps` text; malformed lines are skipped.
    pub fn parse_maps(text: &str) -> Vec<ParsedMapLine> {
        parse_maps(text)
    }

    /// A new mapping (MMAP/MMAP2 record). Whatever was mapped in the range before is
    /// replaced, as the kernel does for `MAP_FIXED` and for the ld.so segment dance.
    #[allow(clippy::too_many_arguments)]
    pub fn on_mmap(
        &mut self,
        pid: u32,
        start: u64,
        len: u64,
        pgoff: u64,
        path: &str,
        exec: bool,
        inode: Option<(u32, u32, u64)>,
        build_id: Option<&[u8]>,
    ) {
        let Some(end) = start.checked_add(len).filter(|&end| end > start) else {
            return;
        };
        if !self.spaces.contains_key(&pid) {
            let space = self.fresh_space();
            self.spaces.insert(pid, space);
        }
        let mut exec_changed = self.carve(pid, start, end);
        // Anonymous data mappings carry nothing we need, and big processes have thousands.
        if (exec || !path.is_empty()) && !self.space_full(pid) {
            let mut mapping = Mapping {
                start,
                end,
                pgoff,
                path: path.to_string(),
                exec,
                inode,
                build_id: build_id.map(<[u8]>::to_vec),
                pid,
                pid_start: None,
            };
            if mapping.per_process_code() {
                mapping.pid_start = self.start_time(pid);
            }
            if let Some(id) = self.intern(mapping) {
                self.link(pid, start, id);
                exec_changed |= exec;
            }
        }
        if exec_changed {
            let stamp = self.stamp();
            if let Some(space) = self.spaces.get_mut(&pid) {
                space.exec_version = stamp;
            }
        }
    }

    /// Whether `pid`'s space holds [`CODE_MAPPINGS_LIVE_MAX`] mappings (counted when so).
    fn space_full(&mut self, pid: u32) -> bool {
        let full = self
            .spaces
            .get(&pid)
            .is_some_and(|s| s.maps.len() >= CODE_MAPPINGS_LIVE_MAX);
        if full {
            self.untracked += 1;
            budget::code_mapping_untracked();
        }
        full
    }

    /// `pid`'s start time (see [`Mapping::pid_start`]), read once per address space.
    pub fn start_time(&mut self, pid: u32) -> Option<u64> {
        let space = self.spaces.get_mut(&pid)?;
        *space
            .start_time
            .get_or_insert_with(|| ProcessIdentity::of(pid).map(|i| i.start_time))
    }

    /// `pid`'s start time if it has been read or set (no /proc access).
    pub fn known_start_time(&self, pid: u32) -> Option<u64> {
        self.spaces.get(&pid)?.start_time.flatten()
    }

    /// Records `pid`'s start time (when the caller knows it better, e.g. from attaching).
    pub fn set_start_time(&mut self, pid: u32, start_time: Option<u64>) {
        if let Some(space) = self.spaces.get_mut(&pid) {
            space.start_time = Some(start_time);
        }
    }

    /// Mappings forgotten to stay within budget (retired code evicted, per-process code
    /// dropped from a space), and mappings not tracked because a process had too many (see
    /// [`symbolize::budget`]).
    pub fn dropped(&self) -> (u64, u64, u64) {
        (self.evicted, self.dropped_live, self.untracked)
    }

    /// Whether `id` was anonymous or JIT code evicted under budget: its frames show as
    /// `[jit]` rather than unknown.
    pub fn evicted_jit(&self, id: MappingId) -> bool {
        !self.arena.contains_key(&id) && self.evicted_anon.contains(id.0)
    }

    /// A new process (not a thread) forked from `parent_pid`: it starts with a copy of the
    /// parent's space. An unknown parent gives the child an empty space.
    pub fn on_fork(&mut self, parent_pid: u32, child_pid: u32) {
        if parent_pid == child_pid {
            return;
        }
        let mut space = self.fresh_space();
        if let Some(parent) = self.spaces.get(&parent_pid) {
            space.maps = parent.maps.clone();
        }
        for id in space.maps.values() {
            if let Some(e) = self.arena.get_mut(id) {
                e.spaces += 1;
            }
        }
        self.replace_space(child_pid, Some(space));
    }

    /// The process exec'd (COMM record with the exec flag): its old mappings are gone and
    /// the new image's MMAP records follow.
    pub fn on_exec(&mut self, pid: u32) {
        let space = self.fresh_space();
        self.replace_space(pid, Some(space));
        self.removals += 1;
    }

    /// The process exited (EXIT record with pid == tid). Its mappings stay in the arena.
    pub fn on_exit(&mut self, pid: u32) {
        if self.replace_space(pid, None) {
            self.removals += 1;
        }
    }

    /// The mapping containing `addr` in `pid`'s current space.
    pub fn find(&self, pid: u32, addr: u64) -> Option<MappingId> {
        self.lookup(pid, addr).map(|(id, _)| id)
    }

    /// Like [`Self::find`], but only an executable mapping: what a code address (a frame)
    /// may refer to.
    pub fn find_code(&self, pid: u32, addr: u64) -> Option<MappingId> {
        self.lookup(pid, addr)
            .filter(|(_, m)| m.exec)
            .map(|(id, _)| id)
    }

    fn lookup(&self, pid: u32, addr: u64) -> Option<(MappingId, &Mapping)> {
        let space = self.spaces.get(&pid)?;
        let (_, &id) = space.maps.range(..=addr).next_back()?;
        let mapping = self.get(id)?;
        (addr < mapping.end).then_some((id, mapping))
    }

    /// The mapping behind an id handed out by this `Processes`.
    ///
    /// # Panics
    /// If `id` did not come from this `Processes` (a caller bug, not a data problem).
    pub fn mapping(&self, id: MappingId) -> &Mapping {
        &self.arena[&id].mapping
    }

    /// Non-panicking variant of [`Self::mapping`].
    pub fn get(&self, id: MappingId) -> Option<&Mapping> {
        self.arena.get(&id).map(|e| &e.mapping)
    }

    /// Whether `pid` has a known address space.
    pub fn contains(&self, pid: u32) -> bool {
        self.spaces.contains_key(&pid)
    }

    /// Current mappings of `pid`, in address order.
    pub fn mappings(&self, pid: u32) -> impl Iterator<Item = MappingId> + '_ {
        self.spaces
            .get(&pid)
            .into_iter()
            .flat_map(|space| space.maps.values().copied())
    }

    /// Number of address spaces held (live processes, and exited ones not yet released).
    pub fn space_count(&self) -> usize {
        self.spaces.len()
    }

    /// Number of mappings held (the arena size): live ones, canonical ones and per-process
    /// code that frames may refer to.
    pub fn mapping_count(&self) -> usize {
        self.arena.len()
    }

    /// The same code address expressed in the first mapping of the same file range, so that
    /// stacks of many processes running one binary (each at its own ASLR base) aggregate as
    /// one stack instead of one per process. Returns `(id, addr)` unchanged for mappings
    /// that are per process (anonymous, JIT, vDSO, deleted files) or unknown ids.
    pub fn canonical(&self, id: MappingId, addr: u64) -> (MappingId, u64) {
        let Some(Entry {
            mapping: m, canon, ..
        }) = self.arena.get(&id)
        else {
            return (id, addr);
        };
        let canon = *canon;
        match self.get(canon) {
            Some(c) if canon != id => (canon, addr.wrapping_sub(m.start).wrapping_add(c.start)),
            _ => (id, addr),
        }
    }

    /// The canonical mapping here of the same file range as `m` (a mapping of another
    /// `Processes`), with `addr` translated into it; `None` if no process here maps it.
    pub fn equivalent(&self, m: &Mapping, addr: u64) -> Option<(MappingId, u64)> {
        let id = *self.by_file_range.get(&FileRange::of(m)?)?;
        let c = self.get(id)?;
        Some((id, addr.wrapping_sub(m.start).wrapping_add(c.start)))
    }

    pub(crate) fn space(&self, pid: u32) -> Option<&AddressSpace> {
        self.spaces.get(&pid)
    }

    /// Bumped whenever a space disappears or is replaced, so dependants can drop state.
    pub(crate) fn removals(&self) -> u64 {
        self.removals
    }

    /// Executable mappings of a space, in address order.
    pub(crate) fn exec_mappings<'a>(
        &'a self,
        space: &'a AddressSpace,
    ) -> impl Iterator<Item = (MappingId, &'a Mapping)> + 'a {
        space
            .maps
            .values()
            .filter_map(|&id| Some((id, self.get(id)?)))
            .filter(|(_, m)| m.exec)
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    fn fresh_space(&mut self) -> AddressSpace {
        let stamp = self.stamp();
        AddressSpace {
            incarnation: stamp,
            exec_version: stamp,
            maps: BTreeMap::new(),
            start_time: None,
            code: CodeOrder::default(),
        }
    }

    /// Remove `[start, end)` from `pid`'s space, keeping the parts of partially covered
    /// mappings. Returns whether an executable mapping was affected.
    fn carve(&mut self, pid: u32, start: u64, end: u64) -> bool {
        let Some(space) = self.spaces.get(&pid) else {
            return false;
        };
        let mut overlapped = Vec::new();
        for (&key, &id) in space.maps.range(..end).rev() {
            match self.get(id) {
                Some(m) if m.end > start => overlapped.push((key, id)),
                Some(_) => break,
                None => overlapped.push((key, id)),
            }
        }
        let mut exec_changed = false;
        for (key, id) in overlapped {
            // Copy before unlinking: unlinking may free it.
            let old = self.get(id).cloned();
            self.unlink(pid, key);
            let Some(old) = old else {
                continue;
            };
            exec_changed |= old.exec;
            let mut pieces = Vec::new();
            if old.start < start {
                pieces.push(Mapping {
                    end: start,
                    ..old.clone()
                });
            }
            if old.end > end {
                pieces.push(Mapping {
                    start: end,
                    pgoff: old.pgoff.wrapping_add(end - old.start),
                    ..old
                });
            }
            for piece in pieces {
                let piece_start = piece.start;
                if let Some(piece_id) = self.intern(piece) {
                    self.link(pid, piece_start, piece_id);
                }
            }
        }
        exec_changed
    }

    fn intern(&mut self, mapping: Mapping) -> Option<MappingId> {
        let hash = mapping.identity_hash();
        if let Some(ids) = self.by_identity.get(&hash) {
            for &id in ids {
                if self.get(id).is_some_and(|m| m.same_identity(&mapping)) {
                    return Some(id);
                }
            }
        }
        let id = MappingId(self.next_id);
        self.next_id = self.next_id.checked_add(1)?;
        let canon = match FileRange::of(&mapping) {
            Some(range) => *self.by_file_range.entry(range).or_insert(id),
            None => id,
        };
        self.arena.insert(
            id,
            Entry {
                mapping,
                canon,
                spaces: 0,
            },
        );
        self.by_identity.entry(hash).or_default().push(id);
        Some(id)
    }

    /// Put `id` at `start` in `pid`'s space (which must exist), counting the reference.
    fn link(&mut self, pid: u32, start: u64, id: MappingId) {
        let (code, per_process) = self
            .get(id)
            .map_or((false, false), |m| (m.exec, m.per_process_code()));
        let Some(space) = self.spaces.get_mut(&pid) else {
            return;
        };
        let old = space.maps.insert(start, id);
        if code {
            space.code.mapped(start, per_process);
        } else {
            space.code.unmapped(start);
        }
        if let Some(e) = self.arena.get_mut(&id) {
            e.spaces += 1;
        }
        if let Some(old) = old {
            self.release(old);
        }
        self.trim_code(pid);
    }

    /// Drop the least recently mapped code of `pid` beyond its budget.
    fn trim_code(&mut self, pid: u32) {
        while let Some(start) = self
            .spaces
            .get_mut(&pid)
            .and_then(|s| s.code.over(CODE_MAPPINGS_LIVE_PER_PROCESS))
        {
            self.unlink(pid, start);
            self.dropped_live += 1;
            budget::code_mapping_dropped();
        }
    }

    /// Remove the mapping at `key` from `pid`'s space.
    fn unlink(&mut self, pid: u32, key: u64) {
        let removed = self.spaces.get_mut(&pid).and_then(|space| {
            space.code.unmapped(key);
            space.maps.remove(&key)
        });
        if let Some(id) = removed {
            self.release(id);
        }
    }

    /// Install (or with `None` remove) `pid`'s space, releasing the old one's mappings.
    /// Returns whether there was an old space.
    fn replace_space(&mut self, pid: u32, space: Option<AddressSpace>) -> bool {
        let old = match space {
            Some(space) => self.spaces.insert(pid, space),
            None => self.spaces.remove(&pid),
        };
        let Some(old) = old else {
            return false;
        };
        for id in old.maps.into_values() {
            self.release(id);
        }
        true
    }

    /// One address space fewer contains `id`; free it when none does and no frame can
    /// refer to it: a duplicate of a canonical file range, or data (frames are code). Code
    /// that frames may refer to is retired instead, within budget.
    fn release(&mut self, id: MappingId) {
        let Some(e) = self.arena.get_mut(&id) else {
            return;
        };
        e.spaces = e.spaces.saturating_sub(1);
        if e.spaces > 0 {
            return;
        }
        if e.canon == id && e.mapping.exec {
            let pid = e.mapping.pid;
            for victim in self.retired.retire(pid, id) {
                self.evict(victim);
            }
            return;
        }
        self.free(id);
    }

    /// Forget retired code (unless it was mapped again since): its frames no longer name it.
    fn evict(&mut self, id: MappingId) {
        let Some(e) = self.arena.get(&id) else {
            return;
        };
        if e.spaces > 0 {
            return;
        }
        if e.mapping.per_process_code() {
            self.evicted_anon.insert(id.0);
        }
        if let Some(range) = FileRange::of(&e.mapping) {
            if self.by_file_range.get(&range) == Some(&id) {
                self.by_file_range.remove(&range);
            }
        }
        self.evicted += 1;
        budget::code_mapping_evicted();
        self.free(id);
    }

    fn free(&mut self, id: MappingId) {
        let Some(e) = self.arena.remove(&id) else {
            return;
        };
        let hash = e.mapping.identity_hash();
        if let Some(ids) = self.by_identity.get_mut(&hash) {
            ids.retain(|&other| other != id);
            if ids.is_empty() {
                self.by_identity.remove(&hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_map(p: &mut Processes, pid: u32, start: u64, len: u64, pgoff: u64, path: &str) {
        p.on_mmap(pid, start, len, pgoff, path, true, Some((8, 1, 42)), None);
    }

    #[test]
    fn find_respects_bounds() {
        let mut p = Processes::new();
        exec_map(&mut p, 1, 0x1000, 0x1000, 0, "/a");
        assert!(p.find(1, 0xfff).is_none());
        let id = p.find(1, 0x1000).expect("start is inside");
        assert_eq!(p.find(1, 0x1fff), Some(id));
        assert!(p.find(1, 0x2000).is_none());
        assert!(p.find(2, 0x1000).is_none());
        assert_eq!(p.mapping(id).path, "/a");
        assert_eq!(p.mapping(id).pid, 1);
    }

    #[test]
    fn overlapping_mmap_splits_old_mapping() {
        let mut p = Processes::new();
        exec_map(&mut p, 1, 0x10000, 0x10000, 0x1000, "/old");
        exec_map(&mut p, 1, 0x14000, 0x2000, 0, "/new");
        let left = p.mapping(p.find(1, 0x10000).expect("left piece"));
        assert_eq!(
            (left.start, left.end, left.pgoff),
            (0x10000, 0x14000, 0x1000)
        );
        let mid = p.mapping(p.find(1, 0x15000).expect("new"));
        assert_eq!(mid.path, "/new");
        let right = p.mapping(p.find(1, 0x16000).expect("right piece"));
        assert_eq!((right.start, right.end), (0x16000, 0x20000));
        assert_eq!(right.pgoff, 0x1000 + 0x6000);
        assert_eq!(right.path, "/old");
        assert_eq!(p.mappings(1).count(), 3);
    }

    #[test]
    fn fork_shares_ids_and_exec_clears() {
        let mut p = Processes::new();
        exec_map(&mut p, 10, 0x1000, 0x1000, 0, "/bin/x");
        p.on_fork(10, 11);
        let a = p.find(10, 0x1800).expect("parent");
        let b = p.find(11, 0x1800).expect("child");
        assert_eq!(a, b);
        // A new process mapping the identical range reuses the id too.
        exec_map(&mut p, 12, 0x1000, 0x1000, 0, "/bin/x");
        assert_eq!(p.find(12, 0x1000), Some(a));
        assert_eq!(p.mapping_count(), 1);

        p.on_exec(11);
        assert!(p.find(11, 0x1800).is_none());
        assert!(p.contains(11));
        p.on_exit(10);
        assert!(!p.contains(10));
        // Ids stay resolvable after the process is gone.
        assert_eq!(p.mapping(a).path, "/bin/x");
    }

    #[test]
    fn same_file_range_in_other_processes_is_canonical() {
        let mut p = Processes::new();
        exec_map(&mut p, 1, 0x10000, 0x2000, 0x1000, "/bin/x");
        exec_map(&mut p, 2, 0x70000, 0x2000, 0x1000, "/bin/x");
        // A different offset of the same file is different code.
        exec_map(&mut p, 3, 0x90000, 0x2000, 0x3000, "/bin/x");
        let a = p.find(1, 0x10010).unwrap();
        let b = p.find(2, 0x70010).unwrap();
        let c = p.find(3, 0x90010).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.canonical(b, 0x70010), (a, 0x10010));
        assert_eq!(p.canonical(a, 0x10010), (a, 0x10010));
        assert_eq!(p.canonical(c, 0x90010), (c, 0x90010));
        // Anonymous and deleted mappings stay per process.
        p.on_mmap(4, 0x5000, 0x1000, 0, "", true, None, None);
        let anon = p.find(4, 0x5000).unwrap();
        assert_eq!(p.canonical(anon, 0x5000), (anon, 0x5000));
        exec_map(&mut p, 5, 0x10000, 0x2000, 0x1000, "/bin/y (deleted)");
        exec_map(&mut p, 6, 0x20000, 0x2000, 0x1000, "/bin/y (deleted)");
        let d = p.find(6, 0x20000).unwrap();
        assert_eq!(p.canonical(d, 0x20000), (d, 0x20000));
        // Across Processes values (a fresh tracker at an interval boundary).
        let mut q = Processes::new();
        exec_map(&mut q, 9, 0x40000, 0x2000, 0x1000, "/bin/x");
        let q9 = q.find(9, 0x40000).unwrap();
        assert_eq!(q.equivalent(p.mapping(b), 0x70010), Some((q9, 0x40010)));
        assert_eq!(q.equivalent(p.mapping(c), 0x90010), None);
    }

    #[test]
    fn churn_frees_duplicate_mappings_of_exited_processes() {
        let mut p = Processes::new();
        // 10 000 short-lived processes running the same binary and library at ASLR bases.
        for pid in 100..10_100u32 {
            let base = 0x1000_0000 * u64::from(pid);
            exec_map(&mut p, pid, base, 0x2000, 0x1000, "/bin/x");
            exec_map(&mut p, pid, base + 0x10_0000, 0x8000, 0, "/lib/libc.so");
            p.on_mmap(pid, base + 0x20_0000, 0x2000, 0, "[vdso]", true, None, None);
            p.on_mmap(
                pid,
                base + 0x30_0000,
                0x1000,
                0,
                "/bin/x",
                false,
                Some((8, 1, 42)),
                None,
            );
            if pid % 2 == 0 {
                p.on_fork(pid, pid + 1_000_000);
                p.on_exit(pid + 1_000_000);
            }
            p.on_exit(pid);
        }
        // Only the canonical (first) mapping of each file range and the first vDSO are
        // left; data mappings go with their last space.
        assert_eq!(p.mapping_count(), 3);
        let first = p.canonical(MappingId(0), 0x1000_0000 * 100);
        assert_eq!(p.mapping(first.0).path, "/bin/x");
        assert!(p.by_identity.values().map(Vec::len).sum::<usize>() <= 3);

        // A live process keeps its mappings; an exec releases them.
        exec_map(&mut p, 7, 0x7000_0000, 0x2000, 0x1000, "/bin/x");
        let live = p.find(7, 0x7000_0000).unwrap();
        assert_eq!(p.mapping_count(), 4);
        p.on_fork(7, 8);
        p.on_exec(7);
        // Still mapped by the forked child.
        assert_eq!(p.mapping(live).path, "/bin/x");
        p.on_exit(8);
        assert!(p.get(live).is_none());
        assert_eq!(p.mapping_count(), 3);

        // A vDSO frame of any process is expressed in the first vDSO.
        p.on_mmap(10, 0x9000_0000, 0x2000, 0, "[vdso]", true, None, None);
        let v = p.find(10, 0x9000_0100).unwrap();
        let (canon, addr) = p.canonical(v, 0x9000_0100);
        assert_ne!(canon, v);
        assert_eq!(addr, 0x1000_0000 * 100 + 0x20_0100);

        // Per-process code that frames refer to directly is kept.
        p.on_mmap(9, 0x5000, 0x1000, 0, "", true, None, None);
        let jit = p.find(9, 0x5000).unwrap();
        p.on_exit(9);
        assert!(p.get(jit).is_some());
    }

    #[test]
    fn remapping_over_a_range_releases_what_it_replaces() {
        let mut p = Processes::new();
        exec_map(&mut p, 1, 0x10000, 0x1000, 0, "/bin/canon");
        exec_map(&mut p, 2, 0x20000, 0x1000, 0, "/bin/canon");
        let dup = p.find(2, 0x20000).unwrap();
        // MAP_FIXED over the duplicate: it is no longer in any space and is freed.
        exec_map(&mut p, 2, 0x20000, 0x1000, 0, "/bin/other");
        assert!(p.get(dup).is_none());
        // The same range reloaded from maps text: old ids released, new ones live.
        p.load_maps_text(2, "20000-21000 r-xp 00000000 08:01 42 /bin/canon\n");
        assert!(p.find(2, 0x20000).is_some());
        assert_eq!(p.mappings(2).count(), 1);
    }

    #[test]
    fn degenerate_mmaps_are_ignored() {
        let mut p = Processes::new();
        exec_map(&mut p, 1, u64::MAX - 10, 100, 0, "/overflow");
        exec_map(&mut p, 1, 0x1000, 0, 0, "/empty");
        assert_eq!(p.mapping_count(), 0);
        p.on_fork(5, 5);
        assert!(!p.contains(5));
    }

    #[test]
    fn maps_text_load_replaces_space() {
        let mut p = Processes::new();
        exec_map(&mut p, 3, 0x9000, 0x1000, 0, "/stale");
        p.load_maps_text(
            3,
            "1000-2000 r-xp 00000000 08:01 5 /bin/true\n3000-4000 rw-p 00000000 00:00 0\n",
        );
        assert!(p.find(3, 0x9000).is_none());
        let id = p.find(3, 0x1000).expect("loaded");
        assert_eq!(p.mapping(id).inode, Some((8, 1, 5)));
        // Anonymous data is not tracked.
        assert!(p.find(3, 0x3000).is_none());
    }

    #[test]
    fn anonymous_code_churn_is_bounded_and_evicted_oldest_first() {
        use symbolize::budget::CODE_MAPPINGS_LIVE_PER_PROCESS as LIVE;
        use symbolize::budget::CODE_MAPPINGS_RETIRED_PER_PROCESS as RETIRED;
        let mut p = Processes::new();
        p.on_mmap(1, 0x1000, 0x1000, 0, "/bin/x", true, Some((8, 1, 5)), None);
        // mmap(PROT_EXEC)/munmap at ever new addresses: each is a distinct mapping.
        let mut first = None;
        for i in 0..3 * (LIVE + RETIRED) as u64 {
            let start = 0x7f00_0000_0000 + i * 0x2000;
            p.on_mmap(1, start, 0x1000, start >> 12, "", true, None, None);
            let id = p.find(1, start).expect("mapped");
            first.get_or_insert(id);
            if i % 2 == 0 {
                // Mapped over by data (anonymous data is untracked): psample sees that.
                p.on_mmap(1, start, 0x1000, 0, "", false, None, None);
            }
        }
        // psample never sees a munmap: the space keeps the newest code, the rest retire, and
        // retired code is bounded too.
        assert!(p.mappings(1).count() <= LIVE + 1);
        assert!(
            p.mapping_count() <= LIVE + RETIRED + 1,
            "{}",
            p.mapping_count()
        );
        let (evicted, dropped, untracked) = p.dropped();
        assert!(evicted > 0 && dropped > 0, "{evicted} {dropped}");
        assert_eq!(untracked, 0);
        // Frames in evicted JIT code know what they were; the binary is untouched.
        let first = first.unwrap();
        assert!(p.get(first).is_none() && p.evicted_jit(first));
        assert!(p.find(1, 0x1800).is_some());
        assert!(!p.evicted_jit(p.find(1, 0x1800).unwrap()));
    }

    #[test]
    fn live_mappings_per_process_are_capped() {
        use symbolize::budget::CODE_MAPPINGS_LIVE_MAX;
        let mut p = Processes::new();
        for i in 0..CODE_MAPPINGS_LIVE_MAX as u64 + 10 {
            let path = format!("/lib/l{i}.so");
            p.on_mmap(
                1,
                0x10_0000 + i * 0x2000,
                0x1000,
                0,
                &path,
                false,
                Some((8, 1, i)),
                None,
            );
        }
        assert_eq!(p.mappings(1).count(), CODE_MAPPINGS_LIVE_MAX);
        assert_eq!(p.dropped().2, 10);
    }

    #[test]
    fn anonymous_code_belongs_to_one_process_incarnation() {
        let mut p = Processes::new();
        p.on_mmap(40, 0x5000, 0x1000, 5, "", true, None, None);
        p.set_start_time(40, Some(111));
        p.on_mmap(40, 0x9000, 0x1000, 9, "", true, None, None);
        let a = p.find(40, 0x9000).unwrap();
        assert_eq!(p.mapping(a).pid_start, Some(111));
        // The pid is reused by another process mapping the same address: a different mapping.
        p.on_exit(40);
        p.on_mmap(40, 0x9000, 0x1000, 9, "", true, None, None);
        p.set_start_time(40, Some(222));
        p.on_mmap(40, 0x9000, 0x1000, 9, "", true, None, None);
        let b = p.find(40, 0x9000).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.mapping(b).pid_start, Some(222));
        // Another process at the same address: not the same code either.
        p.on_mmap(41, 0x9000, 0x1000, 9, "", true, None, None);
        assert_ne!(p.find(41, 0x9000).unwrap(), b);
    }
}
