//! The install pipeline, in stages, each logged with its duration:
//! runfile → cleanup → dependencies → driver → cuda → verify.
//! Every step inside the container goes through [`Exec`]; host-side reads of
//! the container go through [`RootFs`].

use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{CudaConfig, Settings};
use crate::container::driver::{InstalledDriver, ALTERNATE_INSTALL_MARKER, INSTALLER_LOG};
use crate::container::rootfs::{Kind, RootFs};
use crate::container::{ContainerCommand, Exec};
use crate::process::last_lines;
use crate::runfile::{Fetcher, Runfile, Source};
use crate::version::{self, DriverVersion};

pub struct Job<'a> {
    pub settings: &'a Settings,
    pub host: &'a DriverVersion,
    /// What the decision to install was taken on.
    pub installed: &'a InstalledDriver,
    pub ostype: Option<&'a str>,
    pub exec: &'a dyn Exec,
    pub root: &'a RootFs,
    pub fetcher: &'a Fetcher<'a>,
}

const APT_TIMEOUT: Duration = Duration::from_secs(1200);
const PUSH_TIMEOUT: Duration = Duration::from_secs(900);
/// A runfile needs room for itself plus its extraction (about twice its size).
const SPACE_FACTOR: u64 = 3;
/// Working directory for the runfile inside the container: on the root file
/// system (not a tmpfs of limited size) and executable.
const CONTAINER_TMP: &str = "/var/tmp";
const WORKDIR_PREFIX: &str = "/var/tmp/pve-nvidia-hook.";

/// Distribution packages that would conflict with a runfile installation:
/// the plan's `*nvidia*` and `*cuda*`, less the NVIDIA Container Toolkit,
/// which does not conflict and which Docker-in-LXC setups depend on.
pub fn is_conflicting_package(name: &str) -> bool {
    const KEEP: [&str; 3] = ["nvidia-container", "libnvidia-container", "nvidia-docker"];
    (name.contains("nvidia") || name.contains("cuda")) && !KEEP.iter().any(|k| name.starts_with(k))
}

pub fn run(job: &Job) -> Result<()> {
    let runfile = stage("runfile", || obtain_driver_runfile(job))?;
    if job.settings.cleanup {
        stage("cleanup", || cleanup(job))?;
    }
    if !job.settings.dependencies.is_empty() {
        stage("dependencies", || dependencies(job))?;
    }
    stage("driver", || {
        let installer = Installer {
            label: "NVIDIA",
            args: &job.settings.installer_args,
            pass_tmpdir: true,
        };
        push_and_run(job, &runfile, &installer)
    })?;
    if let Some(cuda) = &job.settings.cuda {
        stage("cuda", || install_cuda(job, cuda))?;
    }
    stage("verify", || {
        verify(job.exec, job.root, job.host, job.settings).map(|_| ())
    })
}

fn stage<T>(name: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    log::info!("stage {name}: start");
    let started = Instant::now();
    let result = work();
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => log::info!("stage {name}: done in {secs:.1}s"),
        // The error itself is reported once, with its whole chain, by the caller.
        Err(_) => log::warn!("stage {name}: failed after {secs:.1}s"),
    }
    result.with_context(|| format!("stage {name}"))
}

/// The runfile for the host's version. Its name must carry exactly that
/// version: installing another would give "Driver/library version mismatch".
/// Checked for every candidate before anything is fetched or run.
fn obtain_driver_runfile(job: &Job) -> Result<Runfile> {
    let candidates = job
        .settings
        .runfile_urls(job.host)
        .iter()
        .map(|u| Source::parse(u))
        .collect::<Result<Vec<_>>>()?;
    for source in &candidates {
        let name = source.file_name()?;
        let v = version::from_runfile_name(&name).map_err(|e| anyhow!("runfile {e}"))?;
        if &v != job.host {
            bail!("runfile {name} is driver {v} but the host's kernel module is {}: refusing to install it", job.host);
        }
    }
    job.fetcher.obtain(
        &candidates,
        job.settings.configured_digest(job.host).as_deref(),
    )
}

impl Job<'_> {
    /// The time limit for quick commands in the container.
    fn quick(&self) -> Duration {
        Duration::from_secs(self.settings.command_timeout_secs)
    }
}

fn in_ct(job: &Job, argv: &[&str]) -> Result<crate::process::Output> {
    job.exec.exec(ContainerCommand::new(argv, job.quick()))
}

fn must(job: &Job, cmd: ContainerCommand) -> Result<crate::process::Output> {
    let shown = cmd.display();
    let out = job.exec.exec(cmd)?;
    if !out.success() {
        bail!(
            "`{shown}` in the container: {}: {}",
            out.describe_status(),
            out.diagnostic()
        );
    }
    Ok(out)
}

fn apt(argv: &[&str]) -> ContainerCommand {
    let mut full = vec!["apt-get", "-o", "DPkg::Lock::Timeout=300"];
    full.extend_from_slice(argv);
    ContainerCommand::new(&full, APT_TIMEOUT).env("DEBIAN_FRONTEND", "noninteractive")
}

fn cleanup(job: &Job) -> Result<()> {
    if job.root.kind("/usr/bin/dpkg-query") == Kind::File {
        let out = must(
            job,
            ContainerCommand::new(
                &["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\n"],
                job.quick(),
            ),
        )?;
        let packages: Vec<String> = out
            .stdout_text()
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(status, rest)| (status, rest.trim()))
            })
            .filter(|(status, name)| {
                !status.starts_with('u')
                    && status.get(1..2) != Some("n")
                    && is_conflicting_package(name)
            })
            .map(|(_, name)| name.to_string())
            .collect();
        if packages.is_empty() {
            log::info!("no NVIDIA/CUDA packages to purge");
        } else {
            log::info!("purging {}", packages.join(" "));
            let mut argv = vec!["purge", "-y", "--allow-change-held-packages"];
            argv.extend(packages.iter().map(String::as_str));
            must(job, apt(&argv))?;
            must(job, apt(&["autoremove", "-y", "--purge"]))?;
        }
    }
    // Remnants the installer stumbles on: the distribution packages' marker,
    // and an installer record that is not a plain directory with a readable
    // record (symlinked, looping, garbled).
    let mut remnants = vec![ALTERNATE_INSTALL_MARKER];
    let record_dir = "/var/lib/nvidia";
    if job.root.kind(record_dir) == Kind::Symlink
        || matches!(job.installed, InstalledDriver::Broken(_))
    {
        remnants.push(record_dir);
    }
    let mut argv = vec!["rm", "-rf", "--"];
    argv.extend(remnants);
    must(job, ContainerCommand::new(&argv, job.quick()))?;
    Ok(())
}

fn dependencies(job: &Job) -> Result<()> {
    if job.root.kind("/usr/bin/apt-get") != Kind::File {
        bail!(
            "the container has no apt-get (ostype: {}); install the dependencies ({}) yourself and set \"dependencies\": [] for it",
            job.ostype.unwrap_or("unknown"),
            job.settings.dependencies.join(" ")
        );
    }
    must(job, apt(&["update", "-q"]))?;
    let mut argv = vec!["install", "-y", "-q", "--no-install-recommends"];
    argv.extend(job.settings.dependencies.iter().map(String::as_str));
    must(job, apt(&argv))?;
    Ok(())
}

fn install_cuda(job: &Job, cuda: &CudaConfig) -> Result<()> {
    let source = Source::parse(&cuda.runfile_url)?;
    let runfile = job.fetcher.obtain(
        &[source],
        cuda.sha256
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
    )?;
    let installer = Installer {
        label: "CUDA",
        args: &cuda.installer_args,
        // The CUDA runfile takes its folder from TMPDIR alone.
        pass_tmpdir: false,
    };
    push_and_run(job, &runfile, &installer)
}

/// How to run one runfile.
struct Installer<'a> {
    label: &'a str,
    args: &'a [String],
    /// Also name the working folder with `--tmpdir` (nvidia-installer's
    /// flag; TMPDIR is always set).
    pass_tmpdir: bool,
}

/// Streams the runfile into a fresh directory in the container over
/// lxc-attach's stdin (no `pct push`: it needs the config lock that the
/// start task holds), runs it with `sh`, and removes the directory whatever
/// happened.
fn push_and_run(job: &Job, runfile: &Runfile, installer: &Installer) -> Result<()> {
    let out = must(
        job,
        ContainerCommand::new(
            &["mktemp", "-d", &format!("{WORKDIR_PREFIX}XXXXXXXX")],
            job.quick(),
        ),
    )?;
    let dir = out.stdout_text().trim().to_string();
    let well_formed = dir.starts_with(WORKDIR_PREFIX)
        && dir[WORKDIR_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric());
    if !well_formed {
        bail!(
            "mktemp in the container printed an unexpected path '{}'",
            dir.escape_debug()
        );
    }
    let result = push_and_run_in(job, runfile, installer, &dir);
    let removed = in_ct(job, &["rm", "-rf", "--", &dir]);
    if !removed.as_ref().is_ok_and(|o| o.success()) {
        log::warn!("could not remove {dir} in the container");
    }
    result
}

fn push_and_run_in(job: &Job, runfile: &Runfile, installer: &Installer, dir: &str) -> Result<()> {
    let free = job
        .root
        .free_bytes(dir)
        .with_context(|| format!("free space in the container's {CONTAINER_TMP}"))?;
    let needed = runfile.size.saturating_mul(SPACE_FACTOR);
    if free < needed {
        bail!(
            "not enough space in the container's {CONTAINER_TMP}: {} MB free, {} MB needed for {}",
            free / 1_000_000,
            needed / 1_000_000,
            runfile.name
        );
    }
    let target = format!("{dir}/{}", runfile.name);
    let file =
        File::open(&runfile.path).with_context(|| format!("opening {}", runfile.path.display()))?;
    // A constant script; the path arrives as "$1", never inside the script.
    let push = ContainerCommand::new(
        &[
            "sh",
            "-c",
            "umask 077 && cat > \"$1\"",
            "pve-nvidia-hook",
            &target,
        ],
        PUSH_TIMEOUT,
    )
    .stdin(file);
    must(job, push).context("copying the runfile into the container")?;
    let copied = job.root.file_size(&target).unwrap_or(0);
    if copied != runfile.size {
        bail!(
            "copy of {} into the container is incomplete ({copied} of {} bytes)",
            runfile.name,
            runfile.size
        );
    }
    let mut argv = vec!["sh".to_string(), target.clone()];
    argv.extend(installer.args.iter().cloned());
    if installer.pass_tmpdir {
        argv.extend(["--tmpdir".to_string(), dir.to_string()]);
    }
    let label = installer.label;
    log::info!("running {label} installer {}", runfile.name);
    let timeout = Duration::from_secs(job.settings.installer_timeout_secs);
    let mut cmd = ContainerCommand::new(&argv, timeout).env("TMPDIR", dir);
    cmd.max_stdout = 256 * 1024;
    let out = job.exec.exec(cmd)?;
    if !out.success() {
        bail!(
            "{label} installer {}: {}; output: {}; {}",
            runfile.name,
            out.describe_status(),
            out.diagnostic(),
            installer_log_tail(job.root)
        );
    }
    Ok(())
}

fn installer_log_tail(root: &RootFs) -> String {
    match root.read_tail(INSTALLER_LOG, 4096) {
        Ok(Some(bytes)) => format!(
            "{INSTALLER_LOG}: {}",
            last_lines(&String::from_utf8_lossy(&bytes), 4)
        ),
        _ => format!("{INSTALLER_LOG}: not found"),
    }
}

/// Device nodes without which nvidia-smi cannot reach the GPU.
const REQUIRED_NODES: [&str; 2] = ["/dev/nvidiactl", "/dev/nvidia0"];

/// `nvidia-smi` inside reports exactly the host's version (and `nvcc` runs
/// when CUDA is configured).
pub fn verify(
    exec: &dyn Exec,
    root: &RootFs,
    host: &DriverVersion,
    settings: &Settings,
) -> Result<DriverVersion> {
    let quick = Duration::from_secs(settings.command_timeout_secs);
    let reported = verify_driver(exec, root, host, quick)?;
    if settings.cuda.is_some() {
        verify_nvcc(exec, quick)?;
    }
    Ok(reported)
}

/// `nvidia-smi` inside reports exactly the host's version. A missing device
/// node is named: that is a passthrough problem, not a reason to reinstall.
pub fn verify_driver(
    exec: &dyn Exec,
    root: &RootFs,
    host: &DriverVersion,
    timeout: Duration,
) -> Result<DriverVersion> {
    let out = exec.exec(ContainerCommand::new(
        &[
            "nvidia-smi",
            "--query-gpu=driver_version",
            "--format=csv,noheader",
        ],
        timeout,
    ))?;
    if !out.success() {
        let missing: Vec<&str> = REQUIRED_NODES
            .into_iter()
            .filter(|n| root.kind(n) == Kind::Missing)
            .collect();
        let why = if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; GPU not passed through: {} missing in the container",
                missing.join(", ")
            )
        };
        bail!(
            "nvidia-smi in the container: {}: {}{why}",
            out.describe_status(),
            out.diagnostic()
        );
    }
    let reported = version::from_nvidia_smi(&out.stdout_text())
        .map_err(|e| anyhow!("nvidia-smi in the container: {e}"))?;
    if &reported != host {
        bail!("nvidia-smi in the container reports {reported}, the host's module is {host}");
    }
    Ok(reported)
}

pub fn verify_nvcc(exec: &dyn Exec, timeout: Duration) -> Result<()> {
    let out = exec.exec(ContainerCommand::new(
        &["/usr/local/cuda/bin/nvcc", "--version"],
        timeout,
    ))?;
    if !out.success() {
        bail!(
            "nvcc in the container: {}: {}",
            out.describe_status(),
            out.diagnostic()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicting_packages() {
        for p in [
            "nvidia-driver",
            "libnvidia-ml1",
            "nvidia-smi",
            "libcuda1",
            "cuda-toolkit-12-4",
            "xserver-xorg-video-nvidia",
            "nvidia-alternative",
        ] {
            assert!(is_conflicting_package(p), "{p}");
        }
        for p in [
            "nvidia-container-toolkit",
            "libnvidia-container1",
            "libnvidia-container-tools",
            "nvidia-docker2",
            "bash",
            "libc6",
        ] {
            assert!(!is_conflicting_package(p), "{p}");
        }
    }
}
