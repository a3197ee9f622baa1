//! One ELF image (binary, shared library or vDSO) with everything that names its code: symbol
//! tables of the file, its separate debug file and its MiniDebugInfo, plus DWARF for inline
//! frames. Shared by every mapping of the same file; answers are cached per address.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment};

use crate::budget::ANSWERS_PER_FILE_MAX;
use crate::bytes::FileBytes;
use crate::demangle::demangle;
use crate::dwarf::{has_debug_info, DwarfInfo};
use crate::locate::{self, Resolved};
use crate::minidebuginfo;
use crate::symbol_table::SymbolTable;
use crate::{FrameDetail, FrameKind, ModuleSpec, SymbolizeOptions};

#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    offset: u64,
    filesz: u64,
    vaddr: u64,
}

pub(crate) struct LoadedObject {
    segments: Vec<LoadSegment>,
    symbols: SymbolTable,
    dwarf: Option<DwarfInfo>,
    cache: HashMap<u64, Vec<FrameDetail>>,
    /// GNU build-id of the file, for formats that identify binaries by it (pprof).
    pub build_id: Option<Vec<u8>>,
    /// The mapped files DWARF is read from lazily, checked for truncation after each read.
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
        notes: &mut Vec<String>,
    ) -> LoadedObject {
        let mut me = LoadedObject {
            segments: Vec::new(),
            symbols: SymbolTable::default(),
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

        let main_has_symtab = obj.section_by_name(".symtab").is_some();
        let main_has_dwarf = has_debug_info(&obj);
        let debug = if main_has_dwarf && main_has_symtab {
            None
        } else {
            locate::find_debug(spec, &obj, &opts.debug_dirs)
        };
        let debug_obj = debug
            .as_ref()
            .and_then(|(_, d)| object::File::parse(&**d).ok());

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
        let mini_obj = mini_data
            .as_ref()
            .and_then(|d| object::File::parse(&d[..]).ok());

        let mut sources: Vec<&object::File<'_>> = vec![&obj];
        sources.extend(debug_obj.as_ref());
        sources.extend(mini_obj.as_ref());
        me.symbols = SymbolTable::build(&sources);

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
            me.symbols = SymbolTable::default();
            me.dwarf = None;
            me.mapped.clear();
        }
        me.loaded_bytes = me.symbols.heap_bytes() + me.dwarf.as_ref().map_or(0, |d| d.heap_bytes());
        me
    }

    /// Estimated heap held: symbols, DWARF index and cached answers.
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

    /// Frames at `vaddr` with their source positions, innermost first; empty when nothing
    /// names it.
    pub fn frames(&mut self, vaddr: u64, opts: &SymbolizeOptions) -> Vec<FrameDetail> {
        if let Some(f) = self.cache.get(&vaddr) {
            return f.clone();
        }
        let mut frames = self.compute(vaddr, opts);
        if self.truncated.is_none() && self.mapped.iter().any(FileBytes::faulted) {
            // The file shrank under the DWARF reader: keep only the symbol table, which was
            // copied out while the file was intact, and answer again from it.
            self.truncated = Some(truncation_note(Path::new(&self.describe())));
            self.dwarf = None;
            self.mapped.clear();
            self.cache.clear();
            frames = self.compute(vaddr, opts);
        }
        if self.cache.len() >= ANSWERS_PER_FILE_MAX {
            self.cache.clear();
        }
        self.cache.insert(vaddr, frames.clone());
        frames
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
        let outer = outer.or_else(|| self.symbols.lookup(vaddr).map(str::to_string));
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
