//! Output files and directories on a shared host, with real psample runs as root and a
//! second, unprivileged user (`nobody`) sharing the directories: special files are written
//! in place, replaced files keep owner and mode, nothing another user plants is followed,
//! blocks the profile, or gets deleted by `--keep`.
//!
//! Races are forced, not hoped for: what "another user does while psample samples" is done
//! by the profiled command itself, which psample starts after its checks and runs as
//! nobody (through sudo's SUDO_UID, as psample does for `sudo psample record -- CMD`).

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::*;

const NOBODY: u32 = 65534;
/// A short busy loop for `-- sh -c`: something to sample, finishing on its own.
const SPIN: &str = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done";

fn psample_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(psample());
    c.args(args);
    c
}

/// `psample record --format svg -o OUT -- sh -c SCRIPT`, the command running as nobody.
fn record_as_nobody(out: &Path, script: &str) -> Output {
    psample_cmd(&["record", "--format", "svg", "-o"])
        .arg(out)
        .args(["--", "sh", "-c", script])
        .env("SUDO_UID", NOBODY.to_string())
        .env("SUDO_GID", NOBODY.to_string())
        .env_remove("SUDO_USER")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory anyone may add to, like /tmp (root-owned, 1777).
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Run a shell command as nobody (what another user would do on the host).
fn as_nobody(script: &str) {
    use std::os::unix::process::CommandExt;
    let st = Command::new("sh")
        .args(["-c", script])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(st.success(), "as nobody: {script}");
}

fn is_svg(bytes: &[u8]) -> bool {
    bytes.starts_with(b"<?xml") && bytes.windows(6).any(|w| w == b"</svg>")
}

#[test]
fn dev_null_stays_the_null_device() {
    require!(Need::SystemWide);
    let before = std::fs::metadata("/dev/null").unwrap();
    assert!(
        before.file_type().is_char_device() && before.rdev() == libc::makedev(1, 3),
        "the host's /dev/null was replaced before this test ran (restore it: \
         mknod -m 666 /dev/null.new c 1 3 && mv /dev/null.new /dev/null)"
    );
    let o = psample_cmd(&["record", "-o", "/dev/null", "--", "sh", "-c", SPIN])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let after = std::fs::metadata("/dev/null").unwrap();
    assert!(after.file_type().is_char_device());
    assert_eq!(after.rdev(), before.rdev());
    assert_eq!(after.ino(), before.ino());
    assert_eq!(after.mode() & 0o7777, 0o666);
}

#[test]
fn dash_and_dev_stdout_write_to_stdout() {
    require!(Need::SystemWide);
    let cwd = tempfile::tempdir().unwrap();
    let link_before = std::fs::read_link("/dev/stdout").unwrap();
    for out in ["-", "/dev/stdout"] {
        let o = psample_cmd(&[
            "record", "--format", "svg", "-o", out, "--", "sh", "-c", SPIN,
        ])
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "{out}: {}", stderr(&o));
        assert!(is_svg(&o.stdout), "{out}: stdout is not the profile");
    }
    assert!(dir_names(cwd.path()).is_empty(), "no file named '-'");
    assert_eq!(std::fs::read_link("/dev/stdout").unwrap(), link_before);
}

#[test]
fn a_fifo_is_streamed_to_and_left_in_place() {
    require!(Need::SystemWide);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stream.svg");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let o = psample_cmd(&["record", "--format", "svg", "-o"])
        .arg(&fifo)
        .args(["--", "sh", "-c", SPIN])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(is_svg(&reader.join().unwrap()));
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn a_replaced_file_keeps_owner_and_mode() {
    require!(Need::SystemWide);
    let dir = shared_dir();
    let secret = dir.path().join("secret.svg");
    as_nobody(&format!("umask 077; echo old > {}", secret.display()));
    let o = record_as_nobody(&secret, SPIN);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (NOBODY, NOBODY, 0o600)
    );
    assert!(is_svg(&std::fs::read(&secret).unwrap()));
}

#[test]
fn predictable_temporary_names_cannot_block_the_output() {
    require!(Need::SystemWide);
    let dir = shared_dir();
    let out = dir.path().join("out.svg");
    // Every temporary name the old scheme (.NAME.PID.N.tmp) could use; psample's pid is the
    // command's parent pid.
    let script = format!(
        "for n in $(seq 0 99); do : > {}/.out.svg.$PPID.$n.tmp; done; {SPIN}",
        dir.path().display()
    );
    let o = record_as_nobody(&out, &script);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(is_svg(&std::fs::read(&out).unwrap()));
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), 0);
    // The planted files are untouched and nothing else was left behind.
    assert_eq!(
        dir_names(dir.path()).len(),
        101,
        "{:?}",
        dir_names(dir.path())
    );
}

#[test]
fn a_directory_taking_the_name_mid_run_gets_the_profile_saved_beside_it() {
    require!(Need::SystemWide);
    let dir = shared_dir();
    let out = dir.path().join("out.svg");
    let script = format!("mkdir {}/out.svg; {SPIN}", dir.path().display());
    let o = record_as_nobody(&out, &script);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let saved: PathBuf = err
        .split("saved as ")
        .nth(1)
        .and_then(|r| r.split(" instead").next())
        .unwrap_or_else(|| panic!("no saved name in {err}"))
        .into();
    assert_eq!(saved.parent().unwrap(), dir.path());
    assert!(is_svg(&std::fs::read(&saved).unwrap()), "{err}");
    let planted = std::fs::metadata(&out).unwrap();
    assert!(planted.is_dir() && planted.uid() == NOBODY);
}

#[test]
fn a_252_character_output_name_works() {
    require!(Need::SystemWide);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{}.svg", "n".repeat(248)));
    let o = psample_cmd(&["record", "-o"])
        .arg(&out)
        .args(["--", "sh", "-c", SPIN])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(is_svg(&std::fs::read(&out).unwrap()));
    assert_eq!(dir_names(dir.path()).len(), 1);
}

#[test]
fn links_and_fifos_another_user_planted_are_refused_before_sampling() {
    let dir = shared_dir();
    let victim = tempfile::tempdir().unwrap();
    let target = victim.path().join("victim");
    std::fs::write(&target, "keep me\n").unwrap();
    as_nobody(&format!(
        "ln -s {} {d}/link.svg; mkfifo {d}/fifo.svg",
        target.display(),
        d = dir.path().display()
    ));
    for name in ["link.svg", "fifo.svg"] {
        let marker = dir.path().join(format!("{name}.ran"));
        let o = psample_cmd(&["record", "-o"])
            .arg(dir.path().join(name))
            .args(["--", "touch"])
            .arg(&marker)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("owned by uid 65534") && err.contains("planted"),
            "{err}"
        );
        assert!(
            !marker.exists(),
            "{name}: refused only after the command ran"
        );
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
}

#[test]
fn an_out_dir_symlink_another_user_owns_is_refused() {
    let dir = shared_dir();
    let private = tempfile::tempdir().unwrap();
    as_nobody(&format!(
        "ln -s {} {}/out",
        private.path().display(),
        dir.path().display()
    ));
    let o = psample_cmd(&["record", "--every", "1s", "--out-dir"])
        .arg(dir.path().join("out"))
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("symlink owned by uid 65534"), "{err}");
    assert!(dir_names(private.path()).is_empty());
}

#[test]
fn an_out_dir_others_can_write_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = psample_cmd(&["record", "--every", "1s", "--out-dir"])
        .arg(&open)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not sticky"), "{err}");
}

fn own_files(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| std::fs::metadata(dir.join(n)).unwrap().uid() == 0)
        .collect()
}

/// `record --every 1s --keep 2` on a workload, into `dir`; files psample reports writing.
fn continuous_run(dir: &Path, pid: u32) -> usize {
    let o = psample_cmd(&[
        "record",
        "-p",
        &pid.to_string(),
        "-d",
        "2.5",
        "--every",
        "1s",
    ])
    .args(["--keep", "2", "--out-dir"])
    .arg(dir)
    .output()
    .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    err.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("intervals")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no interval count in {err}"))
}

#[test]
fn keep_prunes_only_this_targets_files_and_never_planted_ones() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "30"]);
    let dir = shared_dir();
    let first = continuous_run(dir.path(), w.pid);
    let mine = own_files(dir.path());
    assert_eq!(mine.len(), first.min(2), "{mine:?}");
    // Another user plants names of the old form and of ours (same target key, a higher
    // run, an older sequence) next to them.
    let key = mine[0].split('-').nth(2).unwrap().to_string();
    let stamp = "20000101T000000.000Z";
    let planted = [
        "psample-record-9.folded".to_string(),
        "psample-record-zz.folded".to_string(),
        format!("psample-record-{key}-0000-000001-{stamp}.folded"),
        format!("psample-record-{key}-9999-000001-{stamp}.folded"),
    ];
    for n in &planted {
        as_nobody(&format!("echo 'a;b 1' > {}/{n}", dir.path().display()));
    }
    let second = continuous_run(dir.path(), w.pid);
    for n in &planted {
        assert!(dir.path().join(n).exists(), "{n} was deleted");
    }
    // Ours: the newest two across both runs, by run and sequence.
    let mut expect: Vec<String> = mine.clone();
    let now = own_files(dir.path());
    let new: Vec<&String> = now.iter().filter(|n| !mine.contains(n)).collect();
    assert_eq!(new.len(), second.min(2), "{now:?}");
    assert!(
        new.iter().all(|n| n.contains(&format!("-{key}-0002-"))),
        "{now:?}"
    );
    expect.extend(new.into_iter().cloned());
    let keep_from = expect.len() - 2;
    assert_eq!(now, expect[keep_from..].to_vec());
}
