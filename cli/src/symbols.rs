//! Building the symbolizer from the command-line flags.

use symbolize::{SymbolizeOptions, Symbolizer};

use crate::args::{DebuginfodMode, SymbolArgs};

pub fn symbolizer(a: &SymbolArgs) -> Symbolizer {
    Symbolizer::new(SymbolizeOptions {
        inline: !a.no_inline,
        demangle: !a.no_demangle,
        debug_dirs: a.debug_dirs.clone(),
        kernel: true,
        debuginfod: (a.debuginfod == DebuginfodMode::Auto).then_some(a.debuginfod_deadline),
    })
}
