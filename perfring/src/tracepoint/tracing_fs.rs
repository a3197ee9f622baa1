//! Finding the tracing filesystem (tracefs since 4.1, debugfs's `tracing/` before and on
//! RHEL 7) and reading an event's `id` and `format` from it.

use std::path::{Path, PathBuf};

use super::format::{FormatError, TracepointFormat};

/// The file operations tracepoint discovery needs. Kept this small so that the real kernel,
/// an emulated old kernel in tests, or a fixture directory can all provide it.
pub trait FileAccess {
    /// Read a tracefs file.
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Whether a path exists.
    fn file_exists(&self, path: &Path) -> bool;
    /// Mounts the kernel's tracing filesystem at `target`: tracefs, or debugfs on kernels
    /// that have no tracefs (`target` is then the debugfs mount point).
    fn mount_tracefs(&self, target: &Path) -> std::io::Result<()>;
}

/// Which filesystem provides the tracing directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracingKind {
    /// tracefs at /sys/kernel/tracing (4.1+).
    Tracefs,
    /// `tracing/` inside debugfs at /sys/kernel/debug (older kernels, RHEL 7).
    DebugfsTracing,
}

/// The tracing directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracing {
    /// The directory that holds `events/`.
    pub root: PathBuf,
    /// Which filesystem it is.
    pub kind: TracingKind,
    /// True when [`Tracing::locate`] mounted it; the caller may unmount it when done.
    pub mounted_by_us: bool,
}

/// Why tracefs or a tracepoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// Neither tracefs nor debugfs is mounted (and we may not mount it).
    #[error(
        "no tracing filesystem is mounted (looked for {tried}); run `mount -t tracefs nodev \
         /sys/kernel/tracing` (kernels before 4.1: `mount -t debugfs nodev /sys/kernel/debug`) \
         or run as root so psample can mount it"
    )]
    NotMounted {
        /// The places looked at.
        tried: String,
    },
    /// Mounting it failed.
    #[error(
        "mounting the tracing filesystem at {target} failed: {source}; mount it yourself with \
         `mount -t tracefs nodev /sys/kernel/tracing` (or `mount -t debugfs nodev \
         /sys/kernel/debug` on kernels before 4.1), which needs root"
    )]
    MountFailed {
        /// Where.
        target: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Mounted, but without the expected directory.
    #[error("mounted {target}, but {expected} still does not exist")]
    MountedButEmpty {
        /// Where it was mounted.
        target: PathBuf,
        /// What is missing.
        expected: PathBuf,
    },
    /// A subsystem or event name with path characters.
    #[error("invalid tracepoint name {subsys}:{name}")]
    BadName {
        /// The subsystem.
        subsys: String,
        /// The event.
        name: String,
    },
    /// No such tracepoint on this kernel.
    #[error(
        "tracepoint {subsys}:{name} does not exist on this kernel ({path} is missing); \
         `perf list 'sched:*'` shows which ones do"
    )]
    NoSuchEvent {
        /// The subsystem.
        subsys: String,
        /// The event.
        name: String,
        /// Its directory, missing.
        path: PathBuf,
    },
    /// A tracefs file could not be read.
    #[error("reading {path}: {source} (tracefs files need root, or a relaxed tracefs mode)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An `id` file without a number.
    #[error("{path} does not hold a tracepoint id: {text:?}")]
    BadId {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// A `format` file that does not parse.
    #[error("parsing {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        source: FormatError,
    },
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS: &str = "/sys/kernel/debug";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

impl Tracing {
    /// Looks in /sys/kernel/tracing, then /sys/kernel/debug/tracing. If neither has `events/`
    /// and `may_mount`, mounts tracefs at /sys/kernel/tracing when the kernel has that mount
    /// point (4.1+), else debugfs at /sys/kernel/debug.
    pub fn locate(fs: &dyn FileAccess, may_mount: bool) -> Result<Tracing, TracingError> {
        let candidates = [
            (Path::new(TRACEFS), TracingKind::Tracefs),
            (Path::new(DEBUGFS_TRACING), TracingKind::DebugfsTracing),
        ];
        for (root, kind) in candidates {
            if fs.file_exists(&root.join("events")) {
                return Ok(Tracing {
                    root: root.to_path_buf(),
                    kind,
                    mounted_by_us: false,
                });
            }
        }
        if !may_mount {
            return Err(TracingError::NotMounted {
                tried: format!("{TRACEFS}/events and {DEBUGFS_TRACING}/events"),
            });
        }
        // The /sys/kernel/tracing directory exists exactly on kernels that have tracefs.
        let (target, root, kind) = if fs.file_exists(Path::new(TRACEFS)) {
            (TRACEFS, TRACEFS, TracingKind::Tracefs)
        } else {
            (DEBUGFS, DEBUGFS_TRACING, TracingKind::DebugfsTracing)
        };
        let target = PathBuf::from(target);
        fs.mount_tracefs(&target)
            .map_err(|source| TracingError::MountFailed {
                target: target.clone(),
                source,
            })?;
        let events = Path::new(root).join("events");
        if !fs.file_exists(&events) {
            return Err(TracingError::MountedButEmpty {
                target,
                expected: events,
            });
        }
        Ok(Tracing {
            root: PathBuf::from(root),
            kind,
            mounted_by_us: true,
        })
    }

    fn event_file(&self, subsys: &str, name: &str, file: &str) -> Result<PathBuf, TracingError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid(subsys) || !valid(name) {
            return Err(TracingError::BadName {
                subsys: subsys.to_string(),
                name: name.to_string(),
            });
        }
        Ok(self.root.join("events").join(subsys).join(name).join(file))
    }

    fn read_event_file(
        &self,
        fs: &dyn FileAccess,
        subsys: &str,
        name: &str,
        file: &str,
    ) -> Result<(PathBuf, Vec<u8>), TracingError> {
        let path = self.event_file(subsys, name, file)?;
        match fs.read_file(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TracingError::NoSuchEvent {
                subsys: subsys.to_string(),
                name: name.to_string(),
                path,
            }),
            Err(source) => Err(TracingError::Read { path, source }),
        }
    }

    /// The id to put in `perf_event_attr.config` for a `PERF_TYPE_TRACEPOINT` event.
    pub fn event_id(
        &self,
        fs: &dyn FileAccess,
        subsys: &str,
        name: &str,
    ) -> Result<u64, TracingError> {
        let (path, bytes) = self.read_event_file(fs, subsys, name, "id")?;
        let text = String::from_utf8_lossy(&bytes);
        text.trim().parse::<u64>().map_err(|_| TracingError::BadId {
            path,
            text: text.chars().take(64).collect(),
        })
    }

    /// The parsed `format` file of `subsys:name`.
    pub fn format(
        &self,
        fs: &dyn FileAccess,
        subsys: &str,
        name: &str,
    ) -> Result<TracepointFormat, TracingError> {
        let (path, bytes) = self.read_event_file(fs, subsys, name, "format")?;
        TracepointFormat::parse(&String::from_utf8_lossy(&bytes))
            .map_err(|source| TracingError::Format { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    /// A filesystem where mounting makes a fixed set of paths appear.
    struct FakeFs {
        present: RefCell<BTreeSet<PathBuf>>,
        after_mount: Vec<PathBuf>,
        mount_result: fn() -> std::io::Result<()>,
        mounts: RefCell<Vec<PathBuf>>,
    }

    impl FakeFs {
        fn new(present: &[&str], after_mount: &[&str]) -> FakeFs {
            FakeFs {
                present: RefCell::new(present.iter().map(PathBuf::from).collect()),
                after_mount: after_mount.iter().map(PathBuf::from).collect(),
                mount_result: || Ok(()),
                mounts: RefCell::new(Vec::new()),
            }
        }
    }

    impl FileAccess for FakeFs {
        fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            if path.ends_with("sched/sched_switch/id") {
                Ok(b"316\n".to_vec())
            } else if path.ends_with("sched/bad/id") {
                Ok(b"garbage".to_vec())
            } else {
                Err(std::io::ErrorKind::NotFound.into())
            }
        }
        fn file_exists(&self, path: &Path) -> bool {
            self.present.borrow().contains(path)
        }
        fn mount_tracefs(&self, target: &Path) -> std::io::Result<()> {
            self.mounts.borrow_mut().push(target.to_path_buf());
            (self.mount_result)()?;
            self.present
                .borrow_mut()
                .extend(self.after_mount.iter().cloned());
            Ok(())
        }
    }

    #[test]
    fn prefers_mounted_tracefs_without_mounting() {
        let fs = FakeFs::new(&["/sys/kernel/tracing/events"], &[]);
        let t = Tracing::locate(&fs, true).unwrap();
        assert_eq!(t.kind, TracingKind::Tracefs);
        assert!(!t.mounted_by_us);
        assert!(fs.mounts.borrow().is_empty());
    }

    #[test]
    fn finds_debugfs_tracing_on_old_kernels() {
        let fs = FakeFs::new(&["/sys/kernel/debug/tracing/events"], &[]);
        let t = Tracing::locate(&fs, false).unwrap();
        assert_eq!(t.root, PathBuf::from("/sys/kernel/debug/tracing"));
        assert_eq!(t.kind, TracingKind::DebugfsTracing);
    }

    #[test]
    fn mounts_tracefs_when_the_kernel_has_its_mount_point() {
        let fs = FakeFs::new(&["/sys/kernel/tracing"], &["/sys/kernel/tracing/events"]);
        let t = Tracing::locate(&fs, true).unwrap();
        assert!(t.mounted_by_us);
        assert_eq!(t.kind, TracingKind::Tracefs);
        assert_eq!(
            *fs.mounts.borrow(),
            vec![PathBuf::from("/sys/kernel/tracing")]
        );
    }

    #[test]
    fn mounts_debugfs_on_kernels_without_tracefs() {
        let fs = FakeFs::new(
            &["/sys/kernel/debug"],
            &["/sys/kernel/debug/tracing/events"],
        );
        let t = Tracing::locate(&fs, true).unwrap();
        assert_eq!(t.kind, TracingKind::DebugfsTracing);
        assert_eq!(
            *fs.mounts.borrow(),
            vec![PathBuf::from("/sys/kernel/debug")]
        );
    }

    #[test]
    fn errors_say_what_to_run() {
        let fs = FakeFs::new(&["/sys/kernel/tracing"], &[]);
        let err = Tracing::locate(&fs, false).unwrap_err();
        assert!(err.to_string().contains("mount -t tracefs"), "{err}");

        let mut fs = FakeFs::new(&["/sys/kernel/tracing"], &[]);
        fs.mount_result = || Err(std::io::ErrorKind::PermissionDenied.into());
        let err = Tracing::locate(&fs, true).unwrap_err();
        assert!(matches!(err, TracingError::MountFailed { .. }));
        assert!(err.to_string().contains("mount -t tracefs"), "{err}");

        let fs = FakeFs::new(&["/sys/kernel/tracing"], &[]);
        let err = Tracing::locate(&fs, true).unwrap_err();
        assert!(matches!(err, TracingError::MountedButEmpty { .. }));
    }

    #[test]
    fn ids_are_read_and_validated() {
        let fs = FakeFs::new(&["/sys/kernel/tracing/events"], &[]);
        let t = Tracing::locate(&fs, false).unwrap();
        assert_eq!(t.event_id(&fs, "sched", "sched_switch").unwrap(), 316);
        assert!(matches!(
            t.event_id(&fs, "sched", "bad"),
            Err(TracingError::BadId { .. })
        ));
        assert!(matches!(
            t.event_id(&fs, "sched", "nope"),
            Err(TracingError::NoSuchEvent { .. })
        ));
        assert!(matches!(
            t.event_id(&fs, "..", "x"),
            Err(TracingError::BadName { .. })
        ));
        assert!(matches!(
            t.format(&fs, "sched", "a/b"),
            Err(TracingError::BadName { .. })
        ));
    }
}
