//! The install pipeline, in stages, each logged with its duration:
//! runfile → cleanup → dependencies → driver → cuda → verify.
//!
//! Every step inside the container goes through [`Exec`]; host-side reads of
//! the container go through its [`Probe`]. The whole install has a time budget,
//! and a host-wide install slot is held only around the copy and the
//! installer: never around a download, nor around the apt stages, whose
//! length the tenant's own programs decide.

mod aside;
mod cleanup;
mod deps;
mod glvnd;
mod push;
mod verify;
mod warning;

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{installer_args, Settings};
use crate::container::confined::ReadError;
use crate::container::dpkg;
use crate::container::probe::Probe;
use crate::container::{ContainerCommand, Exec};
use crate::cuda::{self, Fit};
use crate::process::Output;
use crate::runfile::{self, Fetcher, Runfile, Source};
use crate::state::Locks;
use crate::version::{self, DriverVersion};
use crate::vmid::Vmid;

pub use verify::{passthrough_gap, verify, verify_driver, verify_nvcc};
pub use warning::Warning;

pub struct Job<'a> {
    pub vmid: Vmid,
    pub settings: &'a Settings,
    pub host: &'a DriverVersion,
    pub ostype: Option<&'a str>,
    pub exec: &'a dyn Exec,
    pub root: &'a Probe,
    pub fetcher: &'a Fetcher<'a>,
    pub locks: &'a Locks,
    pub budget: Budget,
    /// Someone waits for this install (hook with `background: false`, or a
    /// command at a terminal): a slot is waited for `slot_wait_secs` at most.
    pub foreground: bool,
}

/// Who runs an install, which decides what may wait for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Inside the hook's post-start (`background: false`): the start task
    /// waits, holding the container's config lock.
    Hook,
    /// A command at a terminal (`install`, `enable --now`).
    Terminal,
    /// Detached, from the hook or from `sync`: nobody waits.
    Background,
}

impl Origin {
    /// Someone waits: a wait for an install slot is bounded by
    /// `slot_wait_secs`.
    pub fn foreground(self) -> bool {
        self != Origin::Background
    }
}

/// The time one container's install may take in all.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
    total: Duration,
}

impl Budget {
    pub fn new(total: Duration) -> Budget {
        Budget {
            deadline: Instant::now() + total,
            total,
        }
    }

    /// `wanted`, or what is left of the budget if that is less; an error
    /// once it is spent.
    pub fn limit(&self, wanted: Duration) -> Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "the install used up its budget of {}s (install_budget_secs)",
                self.total.as_secs()
            );
        }
        Ok(wanted.min(left))
    }
}

/// What an install that succeeded has to say: the container has the host's
/// driver, and these [`Warning`]s (each logged once, where it arose).
#[derive(Debug, Default)]
pub struct Installed {
    pub warnings: Vec<Warning>,
}

pub fn run(job: &Job) -> Result<Installed> {
    let mut warnings = Vec::new();
    // Decided before anything is downloaded: an option the host's release
    // does not know, a CUDA toolkit the host's driver cannot run.
    installer_args::check_for(&job.settings.installer_args, job.host)
        .map_err(|e| anyhow!("installer_args: {e}"))?;
    let cuda = cuda_fit(job.settings, job.host)?;
    if let Some(w) = cuda.as_ref().and_then(|f| Warning::of_cuda(f, job.host)) {
        log::warn!("{w}");
        warnings.push(w);
    }
    let runfile = stage("runfile", || {
        driver_runfile(job.settings, job.host, job.fetcher)
    })?;
    if job.settings.cleanup {
        stage("cleanup", || cleanup::run(job))?;
    }
    stage("dependencies", || deps::run(job))?;
    stage("driver", || {
        warnings.extend(aside::set_aside(job)?);
        let own_libglvnd = job.settings.graphics && glvnd::needs_installers_own(job)?;
        let installer = push::Installer {
            label: "NVIDIA",
            args: job.settings.driver_args(own_libglvnd),
            pass_tmpdir: true,
        };
        push::push_and_run(job, &runfile, &installer)?;
        push::remove_dangling_loader_files(job)
    })?;
    match (&job.settings.cuda, &cuda) {
        (Some(config), Some(Fit::Runs(_) | Fit::Unknown(_))) => stage("cuda", || {
            let source = Source::parse(&config.runfile_url)?;
            let digest = config.sha256.as_deref().map(str::to_ascii_lowercase);
            let runfile = job.fetcher.obtain(&[source], digest.as_deref())?;
            let installer = push::Installer {
                label: "CUDA",
                args: config.installer_args.clone(),
                // The CUDA runfile takes its folder from TMPDIR alone.
                pass_tmpdir: false,
            };
            push::push_and_run(job, &runfile, &installer)
        })?,
        (Some(_), _) => log::info!("stage cuda: skipped (the toolkit needs a newer driver)"),
        (None, _) => {}
    }
    let verified = stage("verify", || {
        verify(
            job.exec,
            job.root,
            job.host,
            job.settings,
            job.vmid,
            job.quick()?,
        )
    })?;
    log::info!("the container has {}", verified.capabilities());
    for w in verified.warnings {
        if !warnings.contains(&w) {
            log::warn!("{w}");
            warnings.push(w);
        }
    }
    Ok(Installed { warnings })
}

/// The configured CUDA toolkit against the host's driver (None: no toolkit
/// configured), from its runfile's name, before anything is fetched.
pub fn cuda_fit(settings: &Settings, host: &DriverVersion) -> Result<Option<Fit>> {
    let Some(config) = &settings.cuda else {
        return Ok(None);
    };
    let name = Source::parse(&config.runfile_url)?.file_name()?;
    Ok(Some(cuda::fit(&name, host)))
}

/// The stage an install failed in: the context of its error ("stage
/// driver: …"), found again by the admin's notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage(pub &'static str);

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {}", self.0)
    }
}

fn stage<T>(name: &'static str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    log::info!("stage {name}: start");
    let started = Instant::now();
    let result = work();
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => log::info!("stage {name}: done in {secs:.1}s"),
        // The error itself is reported once, with its whole chain, by the caller.
        Err(_) => log::warn!("stage {name}: failed after {secs:.1}s"),
    }
    result.context(Stage(name))
}

/// The verified runfile of driver `version` (the host's module's, for an
/// install; the next boot's, for `prefetch`). Its name must carry exactly
/// that version: installing another would give "Driver/library version
/// mismatch". Checked for every candidate before anything is fetched or run.
pub fn driver_runfile(
    settings: &Settings,
    version: &DriverVersion,
    fetcher: &Fetcher,
) -> Result<Runfile> {
    let candidates = settings
        .runfile_urls(version)
        .iter()
        .map(|u| Source::parse(u))
        .collect::<Result<Vec<_>>>()?;
    for source in &candidates {
        let name = source.file_name()?;
        let (v, _) = version::from_runfile_name(&name).map_err(|e| anyhow!("runfile {e}"))?;
        if &v != version {
            bail!("runfile {name} is driver {v} but the host's kernel module is {version}: refusing to install it");
        }
    }
    fetcher
        .obtain(&candidates, settings.configured_digest(version).as_deref())
        .map_err(|e| explain_missing(e, version, settings.runfile_url.is_some()))
}

/// A runfile NVIDIA's own paths do not have (no `runfile_url` configured)
/// is explained: what it means, and what to do. Anything else is as it is.
fn explain_missing(e: anyhow::Error, host: &DriverVersion, configured: bool) -> anyhow::Error {
    match e.downcast_ref::<runfile::NotFound>() {
        Some(missing) if !configured => anyhow!(no_runfile(host, missing)),
        _ => e,
    }
}

/// What to do when NVIDIA publishes no runfile for the host's version.
fn no_runfile(host: &DriverVersion, missing: &runfile::NotFound) -> String {
    format!(
        "NVIDIA publishes no runfile for {host} ({missing}): a vGPU or GRID driver, a beta, or a build \
         only a distribution packages has none there. Set \"runfile_url\" to the runfile for {host} \
         (for example file:///root/NVIDIA-Linux-x86_64-{host}.run, the admin's own file), or \
         bind-mount the host's driver (nvidia-smi, libnvidia-ml, libcuda) into the container, \
         which the hook then leaves alone (host-provided)"
    )
}

impl Job<'_> {
    /// The time limit for quick commands in the container, within the budget.
    fn quick(&self) -> Result<Duration> {
        self.budget.limit(self.settings.limits.command_timeout)
    }
}

fn in_ct(job: &Job, argv: &[&str]) -> Result<Output> {
    job.exec.exec(ContainerCommand::new(argv, job.quick()?))
}

fn must(job: &Job, cmd: ContainerCommand) -> Result<Output> {
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

/// Driver packages a purge takes at most: a real driver has about 40.
const MAX_PURGE: usize = 100;

/// What the install needs of the container's packages (which dependencies
/// are installed, which driver packages are present), worked out from its
/// dpkg database in the reader (no `dpkg-query` of the tenant's runs, and
/// only bounded answers cross); None when it has no dpkg.
fn packages(job: &Job) -> Result<Option<dpkg::Summary>> {
    let wanted = job.settings.all_dependencies();
    let summary = job
        .root
        .read(|c| {
            let Some((file, _)) = c.open_file(dpkg::STATUS)? else {
                return Ok(None);
            };
            let status = std::io::BufReader::new(file.take(dpkg::MAX_STATUS));
            dpkg::summarize(status, &wanted, cleanup::is_conflicting_package, MAX_PURGE)
                .map(Some)
                .map_err(|e| ReadError::io(dpkg::STATUS, e))
        })
        .with_context(|| format!("reading the container's {}", dpkg::STATUS))?;
    if let Some(s) = &summary {
        if s.rejected > 0 {
            log::warn!(
                "{} package name(s) in the container's dpkg status break Debian's rules; ignored",
                s.rejected
            );
        }
    }
    Ok(summary)
}

/// One apt-get: up to 300 s for the dpkg lock (an unattended upgrade in
/// the container), then a mirror's pace; within the install's budget.
const APT_TIMEOUT: Duration = Duration::from_secs(1200);

fn apt(job: &Job, argv: &[&str]) -> Result<ContainerCommand> {
    let mut full = vec!["apt-get", "-o", "DPkg::Lock::Timeout=300"];
    full.extend_from_slice(argv);
    Ok(ContainerCommand::new(&full, job.budget.limit(APT_TIMEOUT)?)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vGPU or GRID host driver, a beta, a build only a distribution
    /// packages: NVIDIA's paths have no runfile, and the error says what
    /// to do instead of a 404 and a digest hint.
    #[test]
    fn no_runfile_from_nvidia_says_what_to_do() {
        let host: DriverVersion = "535.247.01".parse().unwrap();
        let missing = || {
            anyhow::Error::from(runfile::NotFound {
                tried: vec![
                    "https://download.nvidia.com/XFree86/Linux-x86_64/535.247.01/NVIDIA-Linux-x86_64-535.247.01.run".into(),
                    "https://us.download.nvidia.com/tesla/535.247.01/NVIDIA-Linux-x86_64-535.247.01.run".into(),
                ],
            })
        };
        let said = explain_missing(missing(), &host, false).to_string();
        for part in [
            "NVIDIA publishes no runfile for 535.247.01",
            "\"runfile_url\"",
            "file:///root/NVIDIA-Linux-x86_64-535.247.01.run",
            "bind-mount the host's driver",
            "host-provided",
        ] {
            assert!(said.contains(part), "{part}: {said}");
        }
        assert!(!said.contains("sha256"), "{said}");
        // The admin's own source: not NVIDIA's to publish.
        let own = explain_missing(missing(), &host, true).to_string();
        assert!(
            own.starts_with("runfile not found (404 or 403) at "),
            "{own}"
        );
    }

    #[test]
    fn a_spent_budget_is_an_error() {
        let budget = Budget::new(Duration::ZERO);
        let err = budget
            .limit(Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("install_budget_secs"), "{err}");
        let plenty = Budget::new(Duration::from_secs(3600));
        assert_eq!(
            plenty.limit(Duration::from_secs(5)).unwrap(),
            Duration::from_secs(5)
        );
        let two = Duration::from_secs(2);
        assert!(Budget::new(two).limit(Duration::from_secs(60)).unwrap() <= two);
    }
}
