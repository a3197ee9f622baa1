//! # symbolize — addresses to frames
//!
//! Names code addresses of profiled processes the way the target process sees its files:
//! through `/proc/PID/root` and `/proc/PID/map_files` (containers, deleted or replaced
//! binaries), with ELF `.symtab`/`.dynsym` (a bounded-memory index shared per file, see
//! `symbol_index`), DWARF inline frames, separate debug files (build-id and
//! `.gnu_debuglink`, locally or from debuginfod servers, see `debuginfod`), MiniDebugInfo, the
//! vDSO, JIT perf maps and `/proc/kallsyms`. Code no symbol names is named by the start of its
//! function from call-frame information (`function_starts`).
//!
//! Usage: register every mapping with [`Symbolizer::add_module`] (cheap), then ask
//! [`Symbolizer::symbolize`] for each distinct address once, after collection. Files are
//! opened lazily and shared between all mappings of the same file.
//!
//! Everything here reads what profiled processes control, so it also owns the defences the
//! unwinder shares: [`target_file`] (opening a target's files without letting it choose what
//! root opens), [`identity`] (which process a PID means), [`budget`] (caps on what a target
//! can make psample spend, and the count of what was left out), [`compressed`] (inflating
//! sections within budget) and the SIGBUS guard for mapped files that shrink.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod budget;
mod bytes;
pub mod compressed;
mod debuginfod;
mod demangle;
mod dwarf;
mod error;
mod function_starts;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
mod kallsyms;
mod loaded_object;
pub mod locate;
mod minidebuginfo;
mod perf_map;
mod procfs;
mod sigbus;
mod symbol_index;
pub mod target_file;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

pub use bytes::FileBytes;
pub use debuginfod::tls_roots;
pub use debuginfod::DEFAULT_DEADLINE as DEBUGINFOD_DEFAULT_DEADLINE;
pub use demangle::demangle;
pub use error::{BudgetError, FileError, KallsymsError, SectionError};

use debuginfod::Debuginfod;

use kallsyms::KernelSymbols;
use loaded_object::LoadedObject;
use locate::FileKey;
use perf_map::{PerfMaps, Who};

/// How frames are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolizeOptions {
    /// Report inlined callees as their own frames (`--no-inline` turns this off).
    pub inline: bool,
    /// Demangle Rust and C++ names (`--no-demangle` turns this off).
    pub demangle: bool,
    /// Extra roots searched for debug files before /usr/lib/debug (`--debug-dir`).
    pub debug_dirs: Vec<PathBuf>,
    /// Name kernel addresses from /proc/kallsyms; when false they are all `[kernel]`.
    pub kernel: bool,
    /// Fetch debug files (and executables that cannot be read) from the debuginfod servers
    /// in `DEBUGINFOD_URLS`, spending at most this long on the network; `None` (the
    /// default), or no servers named: never.
    pub debuginfod: Option<Duration>,
}

impl Default for SymbolizeOptions {
    fn default() -> Self {
        SymbolizeOptions {
            inline: true,
            demangle: true,
            debug_dirs: Vec::new(),
            kernel: true,
            debuginfod: None,
        }
    }
}

/// What backs a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// A file-backed mapping (possibly deleted, possibly in another mount namespace).
    File,
    /// The `[vdso]` mapping.
    Vdso,
    /// Anonymous executable memory: JIT code, named through /tmp/perf-PID.map.
    Anon,
}

/// One mapping of one process, as the profiler saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleSpec {
    /// What backs the mapping.
    pub kind: ModuleKind,
    /// Exactly as in /proc/PID/maps or the MMAP record (may end in " (deleted)").
    pub path: String,
    /// A process that maps it: used for /proc/PID/root, /proc/PID/map_files and NSpid.
    pub pid: u32,
    /// That process's start time when the mapping was seen ([`identity::ProcessIdentity`]);
    /// `None` if unknown. A PID that means another process by now is not used for the
    /// process's files or JIT map.
    pub pid_start: Option<u64>,
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// File offset of `start`.
    pub pgoff: u64,
    /// The build-id the kernel reported (MMAP2 build-id variant), if any.
    pub build_id: Option<Vec<u8>>,
    /// (major, minor, inode) of the mapped file, if known.
    pub inode: Option<(u32, u32, u64)>,
}

/// A registered mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleHandle(u32);

/// Where a frame's name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A user-space function.
    User,
    /// A kernel function (shown as `name_[k]`).
    Kernel,
    /// An inlined callee (shown as `name_[i]`).
    Inline,
    /// JIT-compiled code named by a perf map (shown as `name_[j]`).
    Jit,
}

/// One named frame; `name` carries no `_[k]`/`_[i]`/`_[j]` suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The function's name (demangled unless asked not to).
    pub name: String,
    /// What kind of code it is.
    pub kind: FrameKind,
}

/// A frame with its source position, for formats that keep lines (pprof). `file` and `line`
/// come from DWARF and are `None` where it has none (symbol-table-only names, JIT, unknown).
/// For an inlined callee's caller the position is the call site.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameDetail {
    /// The function's name (demangled unless asked not to).
    pub name: String,
    /// What kind of code it is.
    pub kind: FrameKind,
    /// Its source file, when DWARF says.
    pub file: Option<String>,
    /// Its source line, when DWARF says.
    pub line: Option<u32>,
}

impl FrameDetail {
    fn without_position(f: Frame) -> FrameDetail {
        FrameDetail {
            name: f.name,
            kind: f.kind,
            file: None,
            line: None,
        }
    }
}

impl From<FrameDetail> for Frame {
    fn from(f: FrameDetail) -> Frame {
        Frame {
            name: f.name,
            kind: f.kind,
        }
    }
}

struct ModuleEntry {
    spec: ModuleSpec,
    /// `None` until first used; then the index of its object, or `None` inside if no file
    /// could be found or trusted.
    object: Option<Option<usize>>,
}

/// Turns addresses into frames; caches parsed files and answers for its whole lifetime.
pub struct Symbolizer {
    opts: SymbolizeOptions,
    modules: Vec<ModuleEntry>,
    objects: Vec<LoadedObject>,
    objects_by_key: HashMap<FileKey, usize>,
    perf_maps: PerfMaps,
    kernel: Option<KernelSymbols>,
    /// Created on first need from the environment; `Some(None)` when there is no server.
    debuginfod: Option<Option<Debuginfod>>,
    warnings: Vec<String>,
    warned: HashSet<String>,
}

impl Symbolizer {
    /// A symbolizer with `opts`; files are read lazily, on first use.
    pub fn new(opts: SymbolizeOptions) -> Symbolizer {
        Symbolizer {
            opts,
            modules: Vec::new(),
            objects: Vec::new(),
            objects_by_key: HashMap::new(),
            perf_maps: PerfMaps::default(),
            kernel: None,
            debuginfod: None,
            warnings: Vec::new(),
            warned: HashSet::new(),
        }
    }

    /// Registers a mapping. Cheap: the file is opened on first use and parsed once per file
    /// identity, so many processes mapping the same library share one parsed object.
    pub fn add_module(&mut self, spec: ModuleSpec) -> ModuleHandle {
        let handle = ModuleHandle(u32::try_from(self.modules.len()).unwrap_or(u32::MAX));
        self.modules.push(ModuleEntry { spec, object: None });
        handle
    }

    /// Frames for one runtime address, innermost first (inlined callees before the function
    /// that contains them). An address no symbol names yields one frame
    /// `basename+0xFILEOFFSET`: the file offset of its function's start where call-frame
    /// information (FDEs) bounds the function, else of the address itself.
    pub fn symbolize(&mut self, module: ModuleHandle, addr: u64) -> Vec<Frame> {
        self.symbolize_detailed(module, addr)
            .into_iter()
            .map(Frame::from)
            .collect()
    }

    /// [`Self::symbolize`] with the source file and line of every frame where DWARF has them
    /// (innermost first, like pprof's `Location.line`).
    pub fn symbolize_detailed(&mut self, module: ModuleHandle, addr: u64) -> Vec<FrameDetail> {
        let Some(entry) = self.modules.get(module.0 as usize) else {
            return vec![FrameDetail {
                name: "[unknown]".into(),
                kind: FrameKind::User,
                file: None,
                line: None,
            }];
        };
        let (kind, start, pgoff) = (entry.spec.kind, entry.spec.start, entry.spec.pgoff);
        let file_offset = addr.wrapping_sub(start).wrapping_add(pgoff);
        let idx = module.0 as usize;
        // Where nothing names the address, the start of its function (from CFI) still does:
        // one frame per function instead of one per address.
        let mut name_offset = file_offset;
        let frames = match kind {
            ModuleKind::Anon => self
                .jit_frame(idx, addr)
                .map(FrameDetail::without_position)
                .into_iter()
                .collect(),
            ModuleKind::File | ModuleKind::Vdso => match self.object_for(idx) {
                Some(obj_idx) => {
                    let opts = &self.opts;
                    let obj = &mut self.objects[obj_idx];
                    let frames = match obj.file_offset_to_vaddr(file_offset) {
                        Some(vaddr) => {
                            let frames = obj.frames(vaddr, opts);
                            if frames.is_empty() {
                                name_offset =
                                    obj.function_start_offset(vaddr).unwrap_or(file_offset);
                            }
                            frames
                        }
                        None => Vec::new(),
                    };
                    if let Some(note) = obj.truncated.clone() {
                        let path = &self.modules[idx].spec.path;
                        self.warn(format!("{path}: {note}"));
                    }
                    frames
                }
                // Code in memfd or other unreadable files may still be a JIT's.
                None if kind == ModuleKind::File => self
                    .jit_frame(idx, addr)
                    .map(FrameDetail::without_position)
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            },
        };
        if frames.is_empty() {
            let label = self
                .modules
                .get(idx)
                .map(|e| unknown_label(&e.spec))
                .unwrap_or_default();
            return vec![FrameDetail {
                name: format!("{label}+0x{name_offset:x}"),
                kind: FrameKind::User,
                file: None,
                line: None,
            }];
        }
        frames
    }

    /// Number of mappings registered so far. Long-running callers (continuous profiling)
    /// start a fresh symbolizer when this grows past what they are willing to hold.
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    /// Number of distinct files parsed so far (each holds its symbol table, DWARF context and
    /// per-address answers). Long-running callers bound memory with it as well.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Estimated heap held by parsed files, cached answers and JIT maps (what
    /// [`budget::SYMBOLIZER_HEAP_MAX`] bounds).
    pub fn heap_bytes(&self) -> usize {
        self.objects
            .iter()
            .map(LoadedObject::heap_bytes)
            .sum::<usize>()
            + self.perf_maps.heap_bytes()
            + self.modules.len() * std::mem::size_of::<ModuleEntry>()
    }

    /// The registered spec behind a handle.
    pub fn module_spec(&self, module: ModuleHandle) -> Option<&ModuleSpec> {
        self.modules.get(module.0 as usize).map(|e| &e.spec)
    }

    /// The GNU build-id of the file behind a mapping: the one the kernel reported, else the
    /// one in the file psample resolved for it (opening it if not done yet).
    pub fn build_id(&mut self, module: ModuleHandle) -> Option<Vec<u8>> {
        let idx = module.0 as usize;
        let entry = self.modules.get(idx)?;
        if let Some(b) = &entry.spec.build_id {
            return Some(b.clone());
        }
        if entry.spec.kind == ModuleKind::Anon {
            return None;
        }
        let obj = self.object_for(idx)?;
        self.objects.get(obj)?.build_id.clone()
    }

    /// The kernel function containing `addr` (module symbols included), or `[kernel]` when
    /// addresses are hidden (kptr_restrict) or kernel naming is off.
    pub fn symbolize_kernel(&mut self, addr: u64) -> Frame {
        let unknown = Frame {
            name: "[kernel]".into(),
            kind: FrameKind::Kernel,
        };
        if !self.opts.kernel {
            return unknown;
        }
        if self.kernel.is_none() {
            let loaded = match KernelSymbols::load() {
                Ok(k) => k,
                Err(e) => {
                    self.warn(format!("{e}; kernel frames shown as [kernel]"));
                    KernelSymbols::Hidden
                }
            };
            if matches!(loaded, KernelSymbols::Hidden) {
                self.warn(
                    "kernel symbol addresses are hidden (kernel.kptr_restrict or missing \
                     privilege); kernel frames shown as [kernel]"
                        .into(),
                );
            }
            self.kernel = Some(loaded);
        }
        match self.kernel.as_ref().and_then(|k| k.lookup(addr)) {
            Some(name) => Frame {
                name: if self.opts.demangle {
                    demangle(name).into_owned()
                } else {
                    name.to_string()
                },
                kind: FrameKind::Kernel,
            },
            None => unknown,
        }
    }

    /// Downloads, in parallel, what debuginfod would be asked for while symbolizing frames
    /// of `modules` (debug files of binaries that have neither a local one nor symbols and
    /// DWARF of their own; executables that cannot be read), so that symbolization then
    /// finds them in the cache. Does nothing unless debuginfod is enabled and configured.
    pub fn prefetch_debuginfo(&mut self, modules: &[ModuleSpec]) {
        if self.opts.debuginfod.is_none() || self.debuginfod().is_none() {
            return;
        }
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for spec in modules.iter().filter(|s| s.kind == ModuleKind::File) {
            if let Some(want) = loaded_object::debuginfod_wants(spec, &self.opts) {
                if seen.insert(want.clone()) {
                    wanted.push(want);
                }
            }
        }
        if let Some(d) = self.debuginfod() {
            d.prefetch(&wanted);
        }
    }

    /// The summary line for debuginfod (`N fetched, N cached, N failed (servers)`), if it
    /// was used.
    pub fn debuginfod_summary(&self) -> Option<String> {
        self.debuginfod.as_ref()?.as_ref()?.summary()
    }

    fn debuginfod(&mut self) -> Option<&Debuginfod> {
        let deadline = self.opts.debuginfod?;
        self.debuginfod
            .get_or_insert_with(|| Debuginfod::from_env(deadline))
            .as_ref()
    }

    /// Everything worth telling the user, each message once: hidden kernel addresses, refused
    /// perf maps, files that did not match their mapping, unusable debug data.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn warn(&mut self, msg: String) {
        // Thousands of short-lived processes must not turn into thousands of lines.
        const MAX_WARNINGS: usize = 100;
        if self.warnings.len() > MAX_WARNINGS || !self.warned.insert(msg.clone()) {
            return;
        }
        if self.warnings.len() == MAX_WARNINGS {
            self.warnings
                .push("further symbolization warnings suppressed".into());
        } else {
            self.warnings.push(msg);
        }
    }

    fn warn_all(&mut self, notes: Vec<String>) {
        for n in notes {
            self.warn(n);
        }
    }

    fn jit_frame(&mut self, module: usize, addr: u64) -> Option<Frame> {
        let spec = &self.modules.get(module)?.spec;
        let who = Who {
            pid: spec.pid,
            pid_start: spec.pid_start,
        };
        let mut notes = Vec::new();
        let name = self.perf_maps.lookup(who, addr, &mut notes);
        self.warn_all(notes);
        name.map(|name| Frame {
            name,
            kind: FrameKind::Jit,
        })
    }

    /// Resolves (once) the object behind a module.
    fn object_for(&mut self, module: usize) -> Option<usize> {
        let entry = self.modules.get(module)?;
        if let Some(done) = entry.object {
            return done;
        }
        let spec = entry.spec.clone();
        let mut notes = Vec::new();
        let resolved = locate::resolve(&spec, &mut notes).or_else(|why| {
            // The file is gone (or out of reach): debuginfod may have the executable itself.
            let Some(id) = spec.build_id.as_deref() else {
                return Err(why);
            };
            let Some((path, data)) = self
                .debuginfod()
                .and_then(|d| d.find(id, debuginfod::Kind::Executable))
            else {
                return Err(why);
            };
            locate::resolved_at(path, data).ok_or(FileError::UnreadableCacheEntry)
        });
        if self.opts.debuginfod.is_some() {
            // Loading may need a debug file from debuginfod.
            self.debuginfod();
        }
        let debuginfod = self.debuginfod.as_ref().and_then(Option::as_ref);
        let idx = match resolved {
            Ok(resolved) => match self.objects_by_key.get(&resolved.key) {
                Some(&idx) => Some(idx),
                None if self.heap_bytes() > budget::SYMBOLIZER_HEAP_MAX => {
                    budget::file_unsymbolized();
                    notes.push(format!(
                        "{} left unsymbolized: the symbolizer holds its {} MiB budget",
                        spec.path,
                        budget::SYMBOLIZER_HEAP_MAX >> 20
                    ));
                    None
                }
                None => {
                    let obj =
                        LoadedObject::load(&spec, &resolved, &self.opts, debuginfod, &mut notes);
                    self.objects.push(obj);
                    let idx = self.objects.len() - 1;
                    self.objects_by_key.insert(resolved.key, idx);
                    Some(idx)
                }
            },
            Err(why) => {
                notes.push(format!("cannot symbolize {}: {why}", spec.path));
                None
            }
        };
        self.warn_all(notes);
        if let Some(entry) = self.modules.get_mut(module) {
            entry.object = Some(idx);
        }
        idx
    }
}

fn unknown_label(spec: &ModuleSpec) -> String {
    let path = spec.path.as_str();
    if path.is_empty() || path.starts_with("//anon") {
        "[anon]".into()
    } else if path.starts_with('[') {
        path.to_string()
    } else {
        locate::basename(path).to_string()
    }
}
