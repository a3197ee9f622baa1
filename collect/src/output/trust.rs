//! Whose files and directories psample may write into as the (often root) user it runs as.
//!
//! The danger in a shared directory is a name another user prepared: a symlink to a file
//! root can write, a FIFO that blocks or collects the profile, a directory swapped in after
//! a check. Entries owned by root or by the person running psample are trusted; so are
//! directories nobody else can change.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Owners whose entries are the caller's own: root, the effective user, and under sudo the
/// user who invoked it (their home directory, their terminal).
pub fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid/getuid have no preconditions.
    let (euid, ruid) = unsafe { (libc::geteuid(), libc::getuid()) };
    if uid == 0 || uid == euid {
        return true;
    }
    ruid == 0
        && std::env::var("SUDO_UID")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            == Some(uid)
}

/// Whether a user other than the trusted ones can add, remove or rename entries in the
/// directory `meta` describes: its owner, or anyone through group or other write bits
/// (group root counts as administrators).
pub fn others_can_write(meta: &Metadata) -> bool {
    let mode = meta.permissions().mode();
    !trusted_owner(meta.uid()) || mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0)
}

/// Sticky (`+t`, like /tmp): others may add entries but not remove or rename ours.
pub fn sticky(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o1000 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_self_are_trusted_nobody_is_not() {
        assert!(trusted_owner(0));
        // SAFETY: geteuid has no preconditions.
        assert!(trusted_owner(unsafe { libc::geteuid() }));
        assert!(!trusted_owner(65534) || std::env::var("SUDO_UID").as_deref() == Ok("65534"));
    }

    #[test]
    fn world_writable_dirs_are_writable_by_others() {
        let tmp = std::fs::metadata("/tmp").unwrap();
        assert!(others_can_write(&tmp) && sticky(&tmp));
        let root = std::fs::metadata("/").unwrap();
        assert!(!others_can_write(&root) && !sticky(&root));
    }
}
