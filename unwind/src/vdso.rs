//! Copy of this process's vDSO image, used as the unwind source for every target's
//! `[vdso]` mapping (the kernel maps the same image into all 64-bit processes).

/// The bytes of our own vDSO, or `None` if there is none.
pub(crate) fn own_vdso_image() -> Option<Vec<u8>> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = crate::maps::parse_maps(&maps)
        .into_iter()
        .find(|l| l.path == "[vdso]" && l.start == base)?;
    let len = usize::try_from(line.end - line.start).ok()?;
    // SAFETY: the kernel maps the vDSO readable for the life of the process, at `base`
    // with the length /proc/self/maps reports, and it is never unmapped or written.
    let bytes = unsafe { std::slice::from_raw_parts(base as usize as *const u8, len) };
    Some(bytes.to_vec())
}
