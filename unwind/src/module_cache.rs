//! Loading modules once and sharing them: parsed files keyed by file identity (so 1000
//! processes mapping libc parse it once), and ready-to-use framehop modules keyed by
//! [`MappingId`] (so forked children and identical layouts reuse them). Both are bounded.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use framehop::{ExplicitModuleSectionInfo, Module};

use symbolize::target_file;
use symbolize::{ModuleKind, ModuleSpec};

use crate::module_file::ModuleFile;
use crate::processes::{Mapping, MappingId};

/// Section data shared by all framehop modules built from the same file.
pub(crate) type SectionData = symbolize::FileBytes;

/// How module files are found; replaceable for recorded fixtures.
pub type FileResolver = Box<dyn Fn(u32, &Mapping) -> Option<File> + Send>;

const MAX_FILES: usize = 512;
const MAX_MAPPINGS: usize = 32_768;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum FileIdent {
    BuildId(Vec<u8>),
    SizeMtime(u64, i64, i64),
    Vdso,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct FileKey {
    dev: u64,
    ino: u64,
    ident: FileIdent,
}

/// A file mapped at a particular place: what unwinding in that mapping needs.
pub(crate) struct LoadedModule {
    pub file: Arc<ModuleFile>,
    pub base_avma: u64,
    pub framehop: Module<SectionData>,
}

impl LoadedModule {
    pub(crate) fn svma(&self, avma: u64) -> Option<u64> {
        avma.checked_sub(self.base_avma)
    }
}

pub(crate) struct ModuleStore {
    resolver: FileResolver,
    files: HashMap<FileKey, (Arc<ModuleFile>, u64)>,
    by_mapping: FxHashMap<MappingId, Option<Arc<LoadedModule>>>,
    tick: u64,
    vdso: Option<Option<Arc<ModuleFile>>>,
}

impl ModuleStore {
    pub(crate) fn new(resolver: FileResolver) -> Self {
        Self {
            resolver,
            files: HashMap::new(),
            by_mapping: FxHashMap::default(),
            tick: 0,
            vdso: None,
        }
    }

    /// The module for an executable mapping, loading it on first use. `pid` is the process
    /// through which the file is opened (it must still be alive for `/proc/PID/root`).
    pub(crate) fn module(
        &mut self,
        pid: u32,
        id: MappingId,
        mapping: &Mapping,
    ) -> Option<Arc<LoadedModule>> {
        if let Some(known) = self.by_mapping.get(&id) {
            return known.clone();
        }
        let loaded = self.load(pid, mapping).map(Arc::new);
        if self.by_mapping.len() >= MAX_MAPPINGS {
            // Entries still held by a process's unwinder state stay; the rest is reloadable.
            self.by_mapping
                .retain(|_, m| m.as_ref().is_some_and(|m| Arc::strong_count(m) > 1));
        }
        self.by_mapping.insert(id, loaded.clone());
        loaded
    }

    fn load(&mut self, pid: u32, mapping: &Mapping) -> Option<LoadedModule> {
        let file = if mapping.path == "[vdso]" {
            self.vdso_file()?
        } else {
            self.file_for(pid, mapping)?
        };
        let base_avma = file.base_avma(mapping.start, mapping.pgoff)?;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: file.text_svma.clone(),
            got_svma: file.got_svma.clone(),
            eh_frame_svma: file.eh_frame.as_ref().map(|s| s.svma.clone()),
            eh_frame: file.eh_frame.as_ref().map(|s| s.data.clone()),
            eh_frame_hdr_svma: file.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
            eh_frame_hdr: file.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
            debug_frame: file.debug_frame.clone(),
            ..Default::default()
        };
        let framehop = Module::new(
            mapping.path.clone(),
            mapping.start..mapping.end,
            base_avma,
            info,
        );
        Some(LoadedModule {
            file,
            base_avma,
            framehop,
        })
    }

    fn file_for(&mut self, pid: u32, mapping: &Mapping) -> Option<Arc<ModuleFile>> {
        let file = (self.resolver)(pid, mapping)?;
        let meta = file.metadata().ok()?;
        let ident = match &mapping.build_id {
            Some(id) => FileIdent::BuildId(id.clone()),
            None => FileIdent::SizeMtime(meta.size(), meta.mtime(), meta.mtime_nsec()),
        };
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            ident,
        };
        self.tick += 1;
        if let Some((module, last_used)) = self.files.get_mut(&key) {
            *last_used = self.tick;
            return Some(module.clone());
        }
        // object's parser reads headers and the CFI sections through the cache; symbol
        // tables are streamed from a second handle (see entry_symbols) so that the cache
        // never holds them.
        let raw = file.try_clone().ok()?;
        let cache = object::ReadCache::new(file);
        let (mut module, hints) = ModuleFile::parse(&cache, &raw)?;
        if let (Some(expected), Some(actual)) = (&mapping.build_id, &module.build_id) {
            // The kernel told us which build was mapped; a different file at that path
            // would unwind with the wrong tables.
            if expected != actual {
                return None;
            }
        }
        if hints.wants_symbols || hints.wants_cfi {
            let link = hints.debuglink.as_ref().map(|(n, crc)| (n.as_str(), *crc));
            let spec = module_spec(pid, mapping);
            let found =
                symbolize::locate::find_debug_by(&spec, module.build_id.as_deref(), link, &[]);
            if let Some((_, debug)) = found {
                let mut merged = module.clone();
                // Symbols are streamed from the same mapped (SIGBUS-guarded) bytes.
                merged.merge_debug_file(&*debug, &*debug, &hints);
                // A debug file that shrank while we read it gave zeros: do without it.
                if !debug.faulted() {
                    module = merged;
                }
            }
        }
        let module = Arc::new(module);
        self.evict_files();
        self.files.insert(key, (module.clone(), self.tick));
        Some(module)
    }

    fn evict_files(&mut self) {
        while self.files.len() >= MAX_FILES {
            // Least recently used among files no live module references.
            let victim = self
                .files
                .iter()
                .filter(|(_, (m, _))| Arc::strong_count(m) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(key) => {
                    self.files.remove(&key);
                }
                None => break,
            }
        }
    }

    /// All 64-bit processes on this kernel share one vDSO image, so our own copy stands in
    /// for the target's (whose memory we never read).
    fn vdso_file(&mut self) -> Option<Arc<ModuleFile>> {
        if let Some(known) = &self.vdso {
            return known.clone();
        }
        let parsed = crate::vdso::own_vdso_image()
            .and_then(|image| ModuleFile::parse(&image[..], &image[..]))
            .map(|(module, _)| Arc::new(module));
        let key = FileKey {
            dev: 0,
            ino: 0,
            ident: FileIdent::Vdso,
        };
        if let Some(module) = &parsed {
            self.files.insert(key, (module.clone(), u64::MAX));
        }
        self.vdso = Some(parsed.clone());
        parsed
    }

    /// Drop cached modules of mappings nobody uses, once the map grows large.
    pub(crate) fn cached_mappings(&self) -> usize {
        self.by_mapping.len()
    }

    pub(crate) fn cached_files(&self) -> usize {
        self.files.len()
    }
}

/// Default resolver: open as the target process sees the file (symbolize's opener: inside
/// its root, regular files only, verified against the mapping).
pub(crate) fn default_resolver() -> FileResolver {
    Box::new(|pid: u32, mapping: &Mapping| {
        let spec = module_spec(pid, mapping);
        let mut notes = Vec::new();
        target_file::open_mapped(&symbolize::locate::mapped_file(&spec), &mut notes)
            .ok()
            .map(|o| o.file)
    })
}

/// `mapping` as seen in `pid` (which may not be the process it was first seen in).
fn module_spec(pid: u32, mapping: &Mapping) -> ModuleSpec {
    ModuleSpec {
        kind: ModuleKind::File,
        path: mapping.path.clone(),
        pid,
        pid_start: (pid == mapping.pid).then_some(mapping.pid_start).flatten(),
        start: mapping.start,
        end: mapping.end,
        pgoff: mapping.pgoff,
        build_id: mapping.build_id.clone(),
        inode: mapping.inode,
    }
}
