//! Which container a process runs in, from `/proc/PID/cgroup`: the `container` label on
//! pprof samples (as Parca and Alloy label profiles by container).
//!
//! Container runtimes put each container in a cgroup named after its id, in cgroup v1 and
//! v2 alike; systemd does the same for services and scopes:
//! - docker: `/docker/ID` (cgroupfs driver) or `/system.slice/docker-ID.scope` (systemd);
//! - containerd (Kubernetes): `/kubepods/.../podUID/ID` or `cri-containerd-ID.scope`;
//! - cri-o: `crio-ID.scope`; podman: `libpod-ID.scope` (or `/libpod_parent/libpod-ID`);
//! - a systemd unit: `/system.slice/nginx.service` → `nginx.service`.
//!
//! Container ids are shortened to 12 hex digits, as `docker ps` shows them. A process in the
//! root cgroup, in a user session, or in a cgroup nobody named has no container label.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

/// `/proc/PID/cgroup` is a few lines per hierarchy; more than this is not a cgroup file.
const MAX_CGROUP_FILE: u64 = 64 * 1024;
/// Processes remembered per cache (one profile's worth); past this the cache starts over.
const MAX_CACHED: usize = 1 << 16;

/// The container name for a `/proc/PID/cgroup` text, if any cgroup in it names one (the
/// unified hierarchy's line first).
pub fn from_cgroup_file(text: &str) -> Option<String> {
    let paths = text.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, _controllers, path) = (f.next()?, f.next()?, f.next()?);
        Some((id != "0", path))
    });
    let mut paths: Vec<(bool, &str)> = paths.collect();
    paths.sort_by_key(|p| p.0);
    paths.into_iter().find_map(|(_, p)| from_cgroup_path(p))
}

/// The container or unit a cgroup path names.
pub fn from_cgroup_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The innermost component naming a container wins (a pod's container, not the pod).
    for (i, part) in parts.iter().enumerate().rev() {
        let unit = part.strip_suffix(".scope").unwrap_or(part);
        for (prefix, runtime) in [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = unit.strip_prefix(prefix).filter(|id| is_container_id(id)) {
                return Some(format!("{runtime}/{}", &id[..12]));
            }
        }
        if is_container_id(part) && i > 0 {
            let runtime = match parts[0] {
                "docker" => "docker",
                p if p.starts_with("kubepods") => "containerd",
                p if p.starts_with("libpod") || p.starts_with("machine.slice") => "podman",
                _ => "container",
            };
            return Some(format!("{runtime}/{}", &part[..12]));
        }
    }
    let last = parts.last()?;
    let systemd_unit =
        last.ends_with(".service") || (last.ends_with(".scope") && !last.starts_with("session-"));
    systemd_unit.then(|| last.to_string())
}

/// 64 hex digits, as docker, containerd, cri-o and podman name containers.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container of `pid` now, `None` when it has none or is gone.
pub fn of_process(pid: u32) -> Option<String> {
    let f = std::fs::File::open(format!("/proc/{pid}/cgroup")).ok()?;
    let mut text = String::new();
    f.take(MAX_CGROUP_FILE).read_to_string(&mut text).ok()?;
    from_cgroup_file(&text)
}

/// Containers of the processes sampled, read once per process (and shared, so a profile
/// holds each name once).
#[derive(Default, Debug)]
pub struct Containers {
    by_pid: HashMap<u32, Option<Arc<str>>>,
}

impl Containers {
    /// The container of `pid`, read from /proc the first time it is asked for.
    pub fn get(&mut self, pid: u32) -> Option<Arc<str>> {
        if let Some(c) = self.by_pid.get(&pid) {
            return c.clone();
        }
        if self.by_pid.len() >= MAX_CACHED {
            self.by_pid.clear();
        }
        let c: Option<Arc<str>> = of_process(pid).map(Arc::from);
        self.by_pid.insert(pid, c.clone());
        c
    }

    /// A process exited: its pid may come back in another container.
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";

    #[test]
    fn runtimes_and_units_are_named() {
        let c = |p: &str| from_cgroup_path(p);
        assert_eq!(
            c(&format!("/system.slice/docker-{ID}.scope")).as_deref(),
            Some("docker/3f2a9c1b7d4e")
        );
        assert_eq!(
            c(&format!("/docker/{ID}")).as_deref(),
            Some("docker/3f2a9c1b7d4e")
        );
        assert_eq!(
            c(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            ))
            .as_deref(),
            Some("containerd/3f2a9c1b7d4e")
        );
        assert_eq!(
            c(&format!("/kubepods/besteffort/pod5678/{ID}")).as_deref(),
            Some("containerd/3f2a9c1b7d4e")
        );
        assert_eq!(
            c(&format!("/machine.slice/libpod-{ID}.scope/container")).as_deref(),
            Some("podman/3f2a9c1b7d4e")
        );
        assert_eq!(
            c(&format!("/crio-{ID}.scope")).as_deref(),
            Some("cri-o/3f2a9c1b7d4e")
        );
        assert_eq!(
            c("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(c("/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(c("/"), None);
        assert_eq!(c("/docker/notanid"), None);
    }

    #[test]
    fn the_unified_line_is_read_first_and_v1_lines_work() {
        let v1 = format!("12:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(
            from_cgroup_file(&v1).as_deref(),
            Some("docker/3f2a9c1b7d4e")
        );
        let mixed = "1:name=systemd:/system.slice/cron.service\n0::/system.slice/nginx.service\n";
        assert_eq!(from_cgroup_file(mixed).as_deref(), Some("nginx.service"));
        assert_eq!(from_cgroup_file("garbage\n\0\n"), None);
    }
}
