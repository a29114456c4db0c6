//! Docker inside the container (Frigate, Ollama, Immich): what the NVIDIA
//! Container Toolkit needs in an LXC container, and exactly what to change.
//!
//! - The toolkit: `nvidia-container-cli` (libnvidia-container, which mounts
//!   the driver into Docker's containers) and its runtime or hook.
//! - `no-cgroups = true` in `/etc/nvidia-container-runtime/config.toml`'s
//!   `[nvidia-container-cli]` for an unprivileged container: it cannot set
//!   up device cgroups, and the LXC container's own already allow the
//!   nodes.
//! - `nesting=1` in the container's `features` (pve-container: nested
//!   containers' mounts and AppArmor), and `keyctl=1` for an unprivileged
//!   one (pve-container's `Config.pm`: "required to use docker inside a
//!   container"; `LXC.pm` turns keyctl() into ENOSYS for unprivileged
//!   containers unless it is set).
//! - The driver's libraries where the toolkit looks for them: entries of
//!   `/etc/ld.so.cache` whose files end in the kernel module's version
//!   (libnvidia-container's `nvc_info.c`, `select_libraries`):
//!   `libnvidia-ml` (its own GPU enumeration and `utility`) and `libcuda`
//!   (`compute`), Docker's default capabilities; the video ones
//!   (`libnvidia-encode`, `libnvcuvid`) are named for `video`.
//!
//! Nothing is said about a container with neither Docker nor the toolkit.

use super::{Level, Report};
use crate::container::confined::Confined;
use crate::container::ldcache;
use crate::container::probe::Probe;
use crate::context::Target;
use crate::version::DriverVersion;

const DOCKER: [&str; 3] = [
    "/usr/bin/dockerd",
    "/usr/sbin/dockerd",
    "/usr/local/bin/dockerd",
];
const CLI: &str = "/usr/bin/nvidia-container-cli";
const RUNTIME: [&str; 3] = [
    "/usr/bin/nvidia-container-runtime",
    "/usr/bin/nvidia-container-runtime-hook",
    "/usr/bin/nvidia-container-toolkit",
];
const CONFIG: &str = "/etc/nvidia-container-runtime/config.toml";
const MAX_CONFIG: u64 = 64 * 1024;

/// Libraries the toolkit mounts by default, and the video ones.
const REQUIRED_LIBS: [&str; 2] = ["libnvidia-ml.so", "libcuda.so"];
const VIDEO_LIBS: [&str; 2] = ["libnvidia-encode.so", "libnvcuvid.so"];

/// What the container holds, read host-side and confined.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Facts {
    docker: bool,
    cli: bool,
    runtime: bool,
    config: Option<String>,
    /// Per library prefix: the names its cache entries resolve to.
    libs: Vec<(String, Vec<String>)>,
    /// Why the cache could not be read, when it could not.
    ldcache_error: Option<String>,
}

/// One plain read of the container's files (see `container::confined`).
fn read_facts(c: &Confined) -> Facts {
    let executable = |p: &str| c.executable(p).unwrap_or(false);
    let mut facts = Facts {
        docker: DOCKER.iter().any(|p| executable(p)),
        cli: executable(CLI),
        runtime: RUNTIME.iter().any(|p| executable(p)),
        ..Facts::default()
    };
    if !facts.docker && !facts.cli && !facts.runtime {
        return facts;
    }
    facts.config = c
        .read_head(CONFIG, MAX_CONFIG)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let entries = match c.read_head(ldcache::PATH, ldcache::MAX_BYTES) {
        Ok(Some(bytes)) => ldcache::parse(&bytes).map_err(str::to_string),
        Ok(None) => Err("missing".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match entries {
        Ok(entries) => {
            for prefix in REQUIRED_LIBS.into_iter().chain(VIDEO_LIBS) {
                let names = entries
                    .iter()
                    .filter(|e| e.key.starts_with(prefix))
                    .take(8)
                    .filter_map(|e| c.resolved_name(&e.value).ok().flatten())
                    .collect();
                facts.libs.push((prefix.to_string(), names));
            }
        }
        Err(e) => facts.ldcache_error = Some(e),
    }
    facts
}

pub(super) fn checks(
    target: &Target,
    root: &Probe,
    host: Option<&DriverVersion>,
    report: &mut Report,
    scope: &str,
) {
    let facts = match root.read(|c| Ok(read_facts(c))) {
        Ok(facts) => facts,
        Err(e) => {
            report.add(
                scope,
                "docker",
                Level::Warn,
                format!("cannot tell: {e}"),
                None,
            );
            return;
        }
    };
    for (check, level, detail, fix) in judge(&facts, target, host) {
        report.add(scope, check, level, detail, fix);
    }
}

type Line = (&'static str, Level, String, Option<String>);

/// The container's `unprivileged: 1`, as Proxmox reads it.
fn unprivileged(target: &Target) -> bool {
    target.pct.get("unprivileged") == Some("1")
}

fn judge(facts: &Facts, target: &Target, host: Option<&DriverVersion>) -> Vec<Line> {
    let vmid = target.vmid;
    let mut lines = Vec::new();
    if !facts.cli && !facts.runtime {
        if facts.docker {
            lines.push((
                "docker",
                Level::Warn,
                "Docker is installed but not the NVIDIA Container Toolkit: its containers get no GPU".into(),
                Some(format!(
                    "inside CT {vmid}: install nvidia-container-toolkit from NVIDIA's apt repository, then: nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
                )),
            ));
        }
        return lines;
    }
    let parts: Vec<&str> = [
        (facts.cli, "nvidia-container-cli"),
        (facts.runtime, "its runtime"),
    ]
    .into_iter()
    .filter_map(|(there, name)| there.then_some(name))
    .collect();
    if facts.cli {
        lines.push((
            "container toolkit",
            Level::Ok,
            format!(
                "the NVIDIA Container Toolkit is installed ({})",
                parts.join(", ")
            ),
            None,
        ));
    } else {
        lines.push((
            "container toolkit",
            Level::Fail,
            "the NVIDIA Container Toolkit's runtime is installed without nvidia-container-cli, which mounts the driver".into(),
            Some(format!("inside CT {vmid}: apt install libnvidia-container-tools")),
        ));
    }
    lines.push(features(target));
    if unprivileged(target) {
        lines.push(no_cgroups(facts, vmid));
    }
    lines.push(libraries(facts, host, vmid));
    lines
}

/// `nesting=1` always, `keyctl=1` for an unprivileged container; the fix
/// keeps the container's other features (`--features` replaces them all).
fn features(target: &Target) -> Line {
    let vmid = target.vmid;
    let mut features: Vec<(String, String)> = target
        .pct
        .get("features")
        .unwrap_or_default()
        .split(',')
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut needed = vec!["nesting"];
    if unprivileged(target) {
        needed.push("keyctl");
    }
    let on = |features: &[(String, String)], key: &str| {
        features.iter().any(|(k, v)| k == key && v == "1")
    };
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|k| !on(&features, k))
        .collect();
    if missing.is_empty() {
        return (
            "docker features",
            Level::Ok,
            format!(
                "{} set",
                needed
                    .iter()
                    .map(|k| format!("{k}=1"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        );
    }
    for key in &missing {
        features.retain(|(k, _)| k != key);
        features.push((key.to_string(), "1".into()));
    }
    let merged: Vec<String> = features.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let why = if unprivileged(target) {
        "Docker needs nesting=1, and keyctl=1 in an unprivileged container (keyctl() is disabled there otherwise)"
    } else {
        "Docker needs nesting=1"
    };
    (
        "docker features",
        Level::Fail,
        format!(
            "{} not set: {why}",
            missing
                .iter()
                .map(|k| format!("{k}=1"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(format!(
            "pct set {vmid} --features {} (as root@pam), then pct reboot {vmid}",
            merged.join(",")
        )),
    )
}

fn no_cgroups(facts: &Facts, vmid: crate::vmid::Vmid) -> Line {
    let set = facts
        .config
        .as_deref()
        .and_then(|t| toml_bool(t, "nvidia-container-cli", "no-cgroups"));
    if set == Some(true) {
        return (
            "toolkit no-cgroups",
            Level::Ok,
            format!("no-cgroups = true in {CONFIG}"),
            None,
        );
    }
    let detail = match (&facts.config, set) {
        (None, _) => format!("{CONFIG} is missing: the toolkit sets up device cgroups, which an unprivileged container cannot (\"failed to add device rules\")"),
        _ => format!("no-cgroups is not true in {CONFIG}'s [nvidia-container-cli]: the toolkit sets up device cgroups, which an unprivileged container cannot (\"failed to add device rules\")"),
    };
    (
        "toolkit no-cgroups",
        Level::Fail,
        detail,
        Some(format!(
            "pct exec {vmid} -- nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place"
        )),
    )
}

/// The driver's libraries in the loader's cache at the host module's
/// version, as `select_libraries` picks them.
fn libraries(facts: &Facts, host: Option<&DriverVersion>, vmid: crate::vmid::Vmid) -> Line {
    let fix = Some(format!(
        "pve-nvidia-hook install --force {vmid} (its installer runs ldconfig), or pct exec {vmid} -- ldconfig"
    ));
    if let Some(e) = &facts.ldcache_error {
        return (
            "toolkit libraries",
            Level::Fail,
            format!(
                "{}: {e}: the toolkit finds the driver's libraries there",
                ldcache::PATH
            ),
            fix,
        );
    }
    let Some(host) = host else {
        return (
            "toolkit libraries",
            Level::Warn,
            "no host version to compare the libraries with".into(),
            None,
        );
    };
    let suffix = format!(".so.{host}");
    let at_version = |prefix: &str| {
        facts
            .libs
            .iter()
            .find(|(p, _)| *p == prefix)
            .is_some_and(|(_, names)| names.iter().any(|n| n.ends_with(&suffix)))
    };
    let problems: Vec<String> = REQUIRED_LIBS
        .iter()
        .filter(|p| !at_version(p))
        .map(|p| {
            let names = facts
                .libs
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, n)| n.join(", "))
                .unwrap_or_default();
            if names.is_empty() {
                format!("{p} is not in {}", ldcache::PATH)
            } else {
                format!("{p} is {names}, not {host}")
            }
        })
        .collect();
    if !problems.is_empty() {
        return (
            "toolkit libraries",
            Level::Fail,
            format!(
                "{}: the toolkit mounts none of it into Docker's containers",
                problems.join("; ")
            ),
            fix,
        );
    }
    let video: Vec<&str> = VIDEO_LIBS
        .iter()
        .copied()
        .filter(|p| at_version(p))
        .collect();
    let video = if video.len() == VIDEO_LIBS.len() {
        "and video (NVENC, NVDEC)".to_string()
    } else {
        "no video libraries (NVIDIA_DRIVER_CAPABILITIES=video gets nothing)".to_string()
    };
    (
        "toolkit libraries",
        Level::Ok,
        format!(
            "{} at {host} in {}, {video}",
            REQUIRED_LIBS.join(", "),
            ldcache::PATH
        ),
        None,
    )
}

/// `key = true|false` in `[section]` of a TOML file, comments ignored.
fn toml_bool(text: &str, section: &str, key: &str) -> Option<bool> {
    let mut current = String::new();
    let mut found = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().trim_matches('"').to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            if current == section && k.trim().trim_matches('"') == key {
                found = match v.trim() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                };
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decision::Request;
    use crate::pct_config::PctConfig;

    fn target(conf: &str) -> Target {
        Target {
            vmid: crate::vmid::Vmid::try_from(101).unwrap(),
            pct: PctConfig::parse(conf),
            request: Request {
                wanted: true,
                reason: None,
            },
            settings: Config::default()
                .settings_for(crate::vmid::Vmid::try_from(101).unwrap(), None),
        }
    }

    const DEFAULT_CONFIG: &str = "#accept-nvidia-visible-devices-as-volume-mounts = false\n\n[nvidia-container-cli]\n#debug = \"/var/log/nvidia-container-toolkit.log\"\nenvironment = []\nload-kmods = true\n#no-cgroups = false\nldconfig = \"@/sbin/ldconfig\"\n\n[nvidia-container-runtime]\nlog-level = \"info\"\n";

    fn host() -> DriverVersion {
        "550.54.14".parse().unwrap()
    }

    fn toolkit(config: &str, cuda: &str) -> Facts {
        Facts {
            docker: true,
            cli: true,
            runtime: true,
            config: Some(config.into()),
            libs: vec![
                (
                    "libnvidia-ml.so".into(),
                    vec!["libnvidia-ml.so.550.54.14".into()],
                ),
                ("libcuda.so".into(), vec![cuda.into()]),
                ("libnvidia-encode.so".into(), vec![]),
                ("libnvcuvid.so".into(), vec![]),
            ],
            ldcache_error: None,
        }
    }

    fn shown(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|(check, level, detail, fix)| {
                format!(
                    "{level:?} {check}: {detail}{}",
                    fix.as_ref()
                        .map(|f| format!(" | fix: {f}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn no_docker_and_no_toolkit_says_nothing() {
        assert!(judge(&Facts::default(), &target("arch: amd64\n"), Some(&host())).is_empty());
        let docker_only = Facts {
            docker: true,
            ..Facts::default()
        };
        let lines = shown(&judge(
            &docker_only,
            &target("arch: amd64\n"),
            Some(&host()),
        ));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with(
                "Warn docker: Docker is installed but not the NVIDIA Container Toolkit"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn an_unprivileged_container_as_the_toolkit_ships_gets_every_fix() {
        let t = target("unprivileged: 1\nfeatures: fuse=1,nesting=1\n");
        let lines = shown(&judge(
            &toolkit(DEFAULT_CONFIG, "libcuda.so.535.261.03"),
            &t,
            Some(&host()),
        ));
        assert_eq!(
            lines,
            [
                "Ok container toolkit: the NVIDIA Container Toolkit is installed (nvidia-container-cli, its runtime)",
                "Fail docker features: keyctl=1 not set: Docker needs nesting=1, and keyctl=1 in an unprivileged container (keyctl() is disabled there otherwise) | fix: pct set 101 --features fuse=1,nesting=1,keyctl=1 (as root@pam), then pct reboot 101",
                "Fail toolkit no-cgroups: no-cgroups is not true in /etc/nvidia-container-runtime/config.toml's [nvidia-container-cli]: the toolkit sets up device cgroups, which an unprivileged container cannot (\"failed to add device rules\") | fix: pct exec 101 -- nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place",
                "Fail toolkit libraries: libcuda.so is libcuda.so.535.261.03, not 550.54.14: the toolkit mounts none of it into Docker's containers | fix: pve-nvidia-hook install --force 101 (its installer runs ldconfig), or pct exec 101 -- ldconfig",
            ]
        );
    }

    #[test]
    fn a_configured_container_is_ok_and_a_privileged_one_needs_no_keyctl() {
        let fixed = DEFAULT_CONFIG.replace("#no-cgroups = false", "no-cgroups = true # for LXC");
        let t = target("unprivileged: 1\nfeatures: keyctl=1,nesting=1\n");
        let lines = shown(&judge(
            &toolkit(&fixed, "libcuda.so.550.54.14"),
            &t,
            Some(&host()),
        ));
        assert!(lines.iter().all(|l| l.starts_with("Ok ")), "{lines:?}");
        assert!(lines.contains(&"Ok toolkit libraries: libnvidia-ml.so, libcuda.so at 550.54.14 in /etc/ld.so.cache, no video libraries (NVIDIA_DRIVER_CAPABILITIES=video gets nothing)".to_string()), "{lines:?}");

        let privileged = target("features: nesting=0\n");
        let lines = shown(&judge(
            &toolkit(DEFAULT_CONFIG, "libcuda.so.550.54.14"),
            &privileged,
            Some(&host()),
        ));
        assert!(
            lines.contains(&"Fail docker features: nesting=1 not set: Docker needs nesting=1 | fix: pct set 101 --features nesting=1 (as root@pam), then pct reboot 101".to_string()),
            "{lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("no-cgroups")),
            "privileged: cgroups work"
        );
    }

    #[test]
    fn toml_as_the_toolkit_writes_it() {
        assert_eq!(
            toml_bool(DEFAULT_CONFIG, "nvidia-container-cli", "no-cgroups"),
            None
        );
        assert_eq!(
            toml_bool(DEFAULT_CONFIG, "nvidia-container-cli", "load-kmods"),
            Some(true)
        );
        assert_eq!(
            toml_bool(
                "[nvidia-container-runtime]\nno-cgroups = true\n",
                "nvidia-container-cli",
                "no-cgroups"
            ),
            None,
            "another section"
        );
        assert_eq!(
            toml_bool(
                "[ \"nvidia-container-cli\" ]\n no-cgroups=false\n",
                "nvidia-container-cli",
                "no-cgroups"
            ),
            Some(false)
        );
    }
}
