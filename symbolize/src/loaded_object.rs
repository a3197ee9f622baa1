//! One ELF image (binary, shared library or vDSO) with everything that names its code: symbol
//! tables of the file, its separate debug file and its MiniDebugInfo, plus DWARF for inline
//! frames. Shared by every mapping of the same file; answers are cached per address.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment};

use crate::budget::ANSWERS_PER_FILE_MAX;
use crate::bytes::FileBytes;
use crate::debuginfod::{self, Debuginfod};
use crate::demangle::demangle;
use crate::dwarf::{has_debug_info, DwarfInfo};
use crate::function_starts::FunctionStarts;
use crate::locate::{self, Resolved};
use crate::minidebuginfo;
use crate::symbol_index::{self, IndexKey, SymbolIndex, SymbolSource};
use crate::{FrameDetail, FrameKind, ModuleSpec, SymbolizeOptions};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    offset: u64,
    filesz: u64,
    vaddr: u64,
}

pub(crate) struct LoadedObject {
    segments: Vec<LoadSegment>,
    symbols: Arc<SymbolIndex>,
    /// FDE ranges: the function around an address that no symbol names.
    function_starts: FunctionStarts,
    dwarf: Option<DwarfInfo>,
    cache: HashMap<u64, Vec<FrameDetail>>,
    /// GNU build-id of the file, for formats that identify binaries by it (pprof).
    pub build_id: Option<Vec<u8>>,
    /// The mapped files DWARF (and an in-place FDE table) is read from lazily, checked for
    /// truncation after each read.
    mapped: Vec<FileBytes>,
    /// A mapped file shrank while we read it; set once, reported once.
    pub truncated: Option<String>,
    /// Heap held by the symbol table and DWARF index (fixed after loading).
    loaded_bytes: usize,
}

impl LoadedObject {
    pub fn load(
        spec: &ModuleSpec,
        resolved: &Resolved,
        opts: &SymbolizeOptions,
        debuginfod: Option<&Debuginfod>,
        notes: &mut Vec<String>,
    ) -> LoadedObject {
        let mut me = LoadedObject {
            segments: Vec::new(),
            symbols: Arc::default(),
            function_starts: FunctionStarts::None,
            dwarf: None,
            cache: HashMap::new(),
            build_id: None,
            mapped: Vec::new(),
            truncated: None,
            loaded_bytes: 0,
        };
        let data = &resolved.data;
        let obj = match object::File::parse(&**data) {
            Ok(o) => o,
            Err(e) => {
                notes.push(format!(
                    "{}: not a readable ELF file ({e})",
                    resolved.path.display()
                ));
                return me;
            }
        };
        me.build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        me.segments = obj
            .segments()
            .filter_map(|s| {
                let (offset, filesz) = s.file_range();
                (filesz > 0).then_some(LoadSegment {
                    offset,
                    filesz,
                    vaddr: s.address(),
                })
            })
            .collect();

        let debug = if is_self_sufficient(&obj) {
            None
        } else {
            locate::find_debug(spec, &obj, &opts.debug_dirs)
                .or_else(|| debuginfod?.find(me.build_id.as_deref()?, debuginfod::Kind::Debuginfo))
        };
        let debug_obj = debug
            .as_ref()
            .and_then(|(_, d)| object::File::parse(&**d).ok());

        let main_has_symtab = obj.section_by_name(".symtab").is_some();
        let main_has_dwarf = has_debug_info(&obj);
        // MiniDebugInfo only matters when nothing better provides a full symbol table.
        let mini_data = if main_has_symtab
            || debug_obj
                .as_ref()
                .is_some_and(|d| d.section_by_name(".symtab").is_some())
        {
            None
        } else {
            mini_debuginfo(&obj, &resolved.path, notes)
        };
        let mini_bytes = mini_data.map(FileBytes::owned);
        let debug_path = debug.as_ref().map(|(p, _)| p.clone());
        let key = match &me.build_id {
            Some(id) => IndexKey::BuildId(id.clone(), debug_path),
            None => IndexKey::File(resolved.key.clone(), debug_path),
        };
        me.symbols = symbol_index::shared(key, || {
            let mut sources = vec![SymbolSource { data, obj: &obj }];
            if let (Some((_, d)), Some(o)) = (&debug, &debug_obj) {
                sources.push(SymbolSource { data: d, obj: o });
            }
            let mini_obj = mini_bytes
                .as_ref()
                .and_then(|d| Some((d, object::File::parse(&**d).ok()?)));
            if let Some((d, o)) = &mini_obj {
                sources.push(SymbolSource { data: d, obj: o });
            }
            SymbolIndex::build(&sources)
        });
        let debug_pair = match (&debug, &debug_obj) {
            (Some((_, d)), Some(o)) => Some((o, d)),
            _ => None,
        };
        me.function_starts = guarded(|| FunctionStarts::load((&obj, data), debug_pair))
            .unwrap_or(FunctionStarts::None);

        // Without inline frames the symbol table names functions just as well, and building the
        // DWARF context is the most expensive part of loading.
        me.dwarf = if opts.inline || me.symbols.is_empty() {
            let loaded = if main_has_dwarf {
                guarded(|| DwarfInfo::load(&obj, data))
            } else {
                match (&debug, &debug_obj) {
                    (Some((_, d)), Some(o)) => guarded(|| DwarfInfo::load(o, d)),
                    _ => None,
                }
            };
            loaded.flatten()
        } else {
            None
        };
        me.mapped.push(data.clone());
        me.mapped.extend(debug.map(|(_, d)| d));
        if me.mapped.iter().any(FileBytes::faulted) {
            // What was parsed may be zeros: nothing of it can be trusted.
            notes.push(truncation_note(&resolved.path));
            me.symbols = Arc::default();
            me.function_starts = FunctionStarts::None;
            me.dwarf = None;
            me.mapped.clear();
        }
        // A shared index is counted by each of its users: an over- rather than underestimate.
        me.loaded_bytes = me.symbols.heap_bytes()
            + me.function_starts.heap_bytes()
            + me.dwarf.as_ref().map_or(0, |d| d.heap_bytes());
        me
    }

    /// Estimated heap held: symbols, FDE table, DWARF index and cached answers.
    pub fn heap_bytes(&self) -> usize {
        self.loaded_bytes + self.cache.len() * 160
    }

    /// ELF virtual address of a file offset, through the PT_LOAD segments (the same rule for
    /// non-PIE executables, PIE executables and shared libraries).
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.filesz)
            .map(|s| s.vaddr.wrapping_add(offset - s.offset))
    }

    /// File offset of an ELF virtual address, through the PT_LOAD segments.
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
            .map(|s| s.offset + (vaddr - s.vaddr))
    }

    /// File offset of the start of the function around `vaddr`, from its FDE; for
    /// addresses that [`Self::frames`] cannot name.
    pub fn function_start_offset(&mut self, vaddr: u64) -> Option<u64> {
        let start = guarded(|| self.function_starts.start_of(vaddr)).flatten();
        if self.check_truncation() {
            // The FDE table was read in place from a file that shrank meanwhile.
            return None;
        }
        self.vaddr_to_file_offset(start?)
    }

    /// Frames at `vaddr` with their source positions, innermost first; empty when nothing
    /// names it.
    pub fn frames(&mut self, vaddr: u64, opts: &SymbolizeOptions) -> Vec<FrameDetail> {
        if let Some(f) = self.cache.get(&vaddr) {
            return f.clone();
        }
        let mut frames = self.compute(vaddr, opts);
        if self.check_truncation() {
            // Answer again from the symbol index alone (see `check_truncation`).
            frames = self.compute(vaddr, opts);
        }
        if self.cache.len() >= ANSWERS_PER_FILE_MAX {
            self.cache.clear();
        }
        self.cache.insert(vaddr, frames.clone());
        frames
    }

    /// Whether a mapped file shrank under a read since the last check (the first time only).
    /// Then what reads the files lazily is dropped: the DWARF reader and an in-place FDE
    /// table. The symbol index stays: it was built while the files were intact, keeps small
    /// string tables as copies and stops naming from a big one whose file shrank.
    fn check_truncation(&mut self) -> bool {
        if self.truncated.is_some() || !self.mapped.iter().any(FileBytes::faulted) {
            return false;
        }
        self.truncated = Some(truncation_note(Path::new(&self.describe())));
        self.dwarf = None;
        if self.function_starts.reads_file() {
            self.function_starts = FunctionStarts::None;
        }
        self.mapped.clear();
        self.cache.clear();
        true
    }

    fn describe(&self) -> String {
        match &self.build_id {
            Some(id) => format!("file with build-id {}", hex(id)),
            None => "a mapped file".into(),
        }
    }

    fn compute(&mut self, vaddr: u64, opts: &SymbolizeOptions) -> Vec<FrameDetail> {
        let mut names = match &self.dwarf {
            Some(d) => match guarded(|| d.frames(vaddr)) {
                Some(n) => n,
                None => {
                    // A panic inside the DWARF reader means this file's DWARF is unusable.
                    self.dwarf = None;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let (outer, outer_file, outer_line) = match names.pop() {
            Some(f) => (f.name, f.file, f.line),
            None => (None, None, None),
        };
        let outer = outer.or_else(|| self.symbols.lookup(vaddr).map(|n| n.into_owned()));
        let Some(outer) = outer else {
            return Vec::new();
        };
        let name = |raw: &str| {
            if opts.demangle {
                demangle(raw).into_owned()
            } else {
                raw.to_string()
            }
        };
        let mut out = Vec::new();
        if opts.inline {
            out.extend(names.into_iter().filter_map(|f| {
                Some(FrameDetail {
                    name: name(f.name.as_deref()?),
                    kind: FrameKind::Inline,
                    file: f.file,
                    line: f.line,
                })
            }));
        }
        out.push(FrameDetail {
            name: name(&outer),
            kind: FrameKind::User,
            file: outer_file,
            line: outer_line,
        });
        out
    }
}

/// A binary with its own symbol table and DWARF needs no debug file.
fn is_self_sufficient(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".symtab").is_some() && has_debug_info(obj)
}

/// What [`LoadedObject::load`] would ask debuginfod for, for the mapping `spec`: the
/// executable when the file cannot be read (and the kernel reported its build-id), its
/// debug file when it needs one and none is found locally.
pub(crate) fn debuginfod_wants(
    spec: &ModuleSpec,
    opts: &SymbolizeOptions,
) -> Option<(Vec<u8>, debuginfod::Kind)> {
    let Ok(resolved) = locate::resolve(spec, &mut Vec::new()) else {
        return Some((spec.build_id.clone()?, debuginfod::Kind::Executable));
    };
    let obj = object::File::parse(&*resolved.data).ok()?;
    if is_self_sufficient(&obj) || locate::find_debug(spec, &obj, &opts.debug_dirs).is_some() {
        return None;
    }
    Some((obj.build_id().ok()??.to_vec(), debuginfod::Kind::Debuginfo))
}

fn truncation_note(path: &Path) -> String {
    format!(
        "{} shrank while psample read it; its DWARF (and anything read after the change) is \
         not used",
        path.display()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mini_debuginfo(
    obj: &object::File<'_>,
    path: &std::path::Path,
    notes: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let sec = obj.section_by_name(".gnu_debugdata")?;
    let xz = sec.data().ok()?;
    match minidebuginfo::decompress(xz) {
        Ok(d) => Some(d),
        Err(e) => {
            notes.push(format!("{}: MiniDebugInfo unusable: {e}", path.display()));
            None
        }
    }
}

/// Runs parsing code over untrusted input so that a bug in a dependency degrades to "no
/// answer" instead of taking the profiler down.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}
