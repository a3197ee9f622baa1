//! Against the running kernel: locate (or mount) the tracing filesystem and parse the live
//! sched formats. Needs root (or a readable tracefs); without it this fails loudly rather than
//! passing without having checked anything.

use std::path::Path;

use perfring::sys::{Kernel, LinuxKernel};
use perfring::tracepoint::{
    FileAccess, SchedSwitchDecoder, SchedWakeupDecoder, StateTableSource, Tracing,
};

struct Host;

impl FileAccess for Host {
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        LinuxKernel.read_file(path)
    }
    fn file_exists(&self, path: &Path) -> bool {
        LinuxKernel.file_exists(path)
    }
    fn mount_tracefs(&self, target: &Path) -> std::io::Result<()> {
        LinuxKernel.mount_tracefs(target)
    }
}

#[test]
fn live_sched_formats_parse_and_build_decoders() {
    // Root: tracefs may have to be mounted.
    test_support::require!(test_support::Need::Root);
    let tracing = Tracing::locate(&Host, true).unwrap_or_else(|e| {
        panic!("this test needs tracefs (run as root so it can be mounted): {e}")
    });
    assert!(tracing.root.join("events").exists());

    let id = tracing
        .event_id(&Host, "sched", "sched_switch")
        .expect("sched_switch id");
    assert!(id > 0);
    let format = tracing
        .format(&Host, "sched", "sched_switch")
        .expect("sched_switch format");
    assert_eq!(format.name, "sched_switch");
    assert_eq!(format.id, Some(id));
    let decoder = SchedSwitchDecoder::new(&format).expect("decoder for live sched_switch");
    assert_eq!(
        decoder.state_table().source(),
        StateTableSource::PrintFmt,
        "the live print fmt should carry the prev_state table: {}",
        format.print_fmt
    );

    for name in ["sched_wakeup", "sched_wakeup_new"] {
        let format = tracing.format(&Host, "sched", name).expect(name);
        SchedWakeupDecoder::new(&format).expect(name);
    }
    assert!(tracing.event_id(&Host, "sched", "no_such_event").is_err());
}
