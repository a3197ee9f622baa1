//! Turning mangled Rust (legacy and v0) and Itanium C++ names into readable ones.
//!
//! Names come from untrusted files, so input and output are both length-capped: a crafted C++
//! name can demangle to an exponentially long string.

use std::borrow::Cow;
use std::fmt;

/// Longer mangled names are shown as-is rather than parsed.
const MAX_MANGLED: usize = 16 * 1024;
/// Demangled output beyond this is abandoned (the mangled name is shown instead).
const MAX_DEMANGLED: usize = 64 * 1024;

/// Demangles `name` if it is a Rust or C++ symbol; anything else is returned unchanged.
pub fn demangle(name: &str) -> Cow<'_, str> {
    if name.len() > MAX_MANGLED {
        return Cow::Borrowed(name);
    }
    if let Some(s) = demangle_rust(name) {
        return Cow::Owned(s);
    }
    if let Some(s) = demangle_cpp(name) {
        return Cow::Owned(s);
    }
    Cow::Borrowed(name)
}

fn demangle_rust(name: &str) -> Option<String> {
    let d = rustc_demangle::try_demangle(name).ok()?;
    let mut out = Capped::default();
    // `{:#}` leaves out the legacy hash suffix, which only adds noise to a profile.
    fmt::write(&mut out, format_args!("{d:#}")).ok()?;
    Some(out.0)
}

fn demangle_cpp(name: &str) -> Option<String> {
    // Only Itanium-mangled names; also the common `._Z` / `__Z` variants are not expected on
    // Linux ELF, so anything else is not C++.
    if !name.starts_with("_Z") {
        return None;
    }
    let sym = cpp_demangle::Symbol::new(name.as_bytes()).ok()?;
    let mut out = Capped::default();
    sym.structured_demangle(&mut out, &cpp_demangle::DemangleOptions::default())
        .ok()?;
    Some(out.0)
}

#[derive(Default)]
struct Capped(String);

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.0.len() + s.len() > MAX_DEMANGLED {
            return Err(fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_c_names_are_untouched() {
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Zfoo_not_really"), "_Zfoo_not_really");
    }

    #[test]
    fn oversized_names_are_not_parsed() {
        let long = format!("_ZN{}E", "3abc".repeat(10_000));
        assert_eq!(demangle(&long), long);
    }
}
