//! Trust decisions with real processes: a command launched under sudo runs as the invoking
//! user, not as root. (Perf-map ownership/mode/symlink checks and bounded reads are tested
//! against real processes in symbolize/tests/real_processes.rs; parsers of kernel records,
//! tracepoint formats, ELF/DWARF, unwinding and /proc maps are fuzzed in fuzz/.)

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::*;

/// Runs `psample record -- sh -c 'id -u; id -g; spin'` with sudo's variables set and returns
/// the uid and gid the command saw.
fn launched_identity(extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    // The dropped command must be able to write its answer.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let ids = dir.path().join("ids");
    let script = format!(
        "id -u > {0}; id -g >> {0}; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
        ids.display()
    );
    // The profile goes to a file of the test's own (never a host file such as /dev/null).
    let out = dir.path().join("p.folded");
    let mut args = vec!["record", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let o = Command::new(psample())
        .args(&args)
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65533")
        .env("SUDO_USER", "nobody")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let text = std::fs::read_to_string(&ids).unwrap_or_else(|e| panic!("{e}: {err}"));
    let mut lines = text.lines();
    (
        lines.next().unwrap_or("").to_string(),
        lines.next().unwrap_or("").to_string(),
    )
}

#[test]
fn command_under_sudo_runs_as_the_invoking_user() {
    require!(Need::SystemWide);
    assert_eq!(
        unsafe { libc::getuid() },
        0,
        "this test plays sudo: run it as root"
    );
    let _g = serial();
    assert_eq!(launched_identity(&[]), ("65534".into(), "65533".into()));
}

#[test]
fn keep_root_keeps_root() {
    require!(Need::SystemWide);
    assert_eq!(unsafe { libc::getuid() }, 0, "run as root");
    let _g = serial();
    assert_eq!(
        launched_identity(&["--keep-root"]),
        ("0".into(), "0".into())
    );
}

#[test]
fn invalid_sudo_variables_are_not_trusted_to_mean_anything_else() {
    require!(Need::SystemWide);
    let _g = serial();
    // SUDO_UID=0 or garbage: nothing to drop to; the command runs as the real user (root).
    for (uid, gid) in [("0", "0"), ("abc", "1"), ("", "")] {
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("ids");
        let o = Command::new(psample())
            .args(["record", "-o"])
            .arg(dir.path().join("p.folded"))
            .args(["--", "sh", "-c"])
            .arg(format!("id -u > {}", ids.display()))
            .env("SUDO_UID", uid)
            .env("SUDO_GID", gid)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&ids).unwrap().trim(),
            "0",
            "{uid:?}"
        );
    }
}
