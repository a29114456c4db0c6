//! The tool's own configuration (`/etc/pve-nvidia-hook/config.json`) and the
//! settings it resolves to for one container.
//!
//! Every key is optional; unknown keys, wrong types and bad values are
//! configuration errors (exit 2) that name the file and the key: see
//! [`load`], which trusts the file only as opened and validates it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::version::DriverVersion;
use crate::vmid::Vmid;

pub mod installer_args;
mod load;
mod phoenix;

pub use load::{load, paths_anyway};
pub use phoenix::read_phoenix;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pve-nvidia-hook/config.json";

/// NVIDIA's public download path, then the datacenter path, tried in order
/// when no `runfile_url` is configured.
pub const DEFAULT_RUNFILE_URLS: [&str; 2] = [
    "https://download.nvidia.com/XFree86/Linux-x86_64/{version}/NVIDIA-Linux-x86_64-{version}.run",
    "https://us.download.nvidia.com/tesla/{version}/NVIDIA-Linux-x86_64-{version}.run",
];

/// Left out the OpenGL, EGL and GLX libraries (and so Vulkan's).
pub const NO_OPENGL_FILES: &str = "--no-opengl-files";

/// What the graphics libraries need in the container beyond libglvnd: the
/// Vulkan loader, and the X libraries libGLX_nvidia links against.
pub const GRAPHICS_DEPENDENCIES: [&str; 3] = ["libvulkan1", "libx11-6", "libxext6"];

/// What the installer needs inside the container. The seed installed
/// `build-essential pkg-config wget`; with `--no-kernel-module` nothing is
/// compiled and the hook pushes the runfile itself, so none of these is needed
/// for the driver. `kmod` gives the installer `lsmod`/`modprobe` to find the
/// host's loaded module, `ca-certificates` lets CUDA samples and pip work.
pub const DEFAULT_DEPENDENCIES: [&str; 2] = ["kmod", "ca-certificates"];

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DigestSpec {
    One(String),
    PerVersion(BTreeMap<String, String>),
}

/// What is restarted after an install replaced the driver under a running
/// container, when some of its processes still map the old libraries
/// (they fail with "Driver/library version mismatch" until restarted).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RestartAfterInstall {
    /// Nothing: they are named in the log.
    #[default]
    #[serde(rename = "none")]
    Nothing,
    /// Their systemd services inside the container (`systemctl restart`).
    Services,
    /// The whole container (`pct reboot`), from the background install
    /// once the start task has let the container's config lock go.
    Container,
}

/// Which outcomes of a background install the admin is told of through
/// Proxmox's notifications (`notify`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyMode {
    /// A failed install (`error`), and a container that cannot be brought
    /// to the host's version (`warning`).
    #[default]
    Errors,
    /// Those, and every install that succeeded (`info`).
    All,
    Off,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CudaConfig {
    /// CUDA runfile (`cuda_<ver>_<drv>_linux.run`), installed with
    /// `--silent --toolkit`: toolkit only, never its bundled driver.
    pub runfile_url: String,
    pub sha256: Option<String>,
    #[serde(default = "default_cuda_args")]
    pub installer_args: Vec<String>,
}

fn default_cuda_args() -> Vec<String> {
    ["--silent", "--toolkit", "--no-man-page", "--override"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub pve: PathBuf,
    pub sys: PathBuf,
    pub proc: PathBuf,
    pub cache: PathBuf,
    pub lock: PathBuf,
    pub log: PathBuf,
    /// Host device nodes (`doctor` compares them with the containers').
    pub dev: PathBuf,
    /// What outlives a reboot on this node: each container's last install
    /// result.
    pub state: PathBuf,
    /// This node's own runfile cache, used when `cache` is on a shared file
    /// system that cannot be locked or trusted.
    pub local_cache: PathBuf,
    /// Where storage paths (`/var/lib/vz`) are found: `/` on a host; the
    /// tests give each simulated node a folder of its own.
    pub storage_root: PathBuf,
    /// The installed kernels' modules (`<modules>/<kernel>/`), for the
    /// NVIDIA module the next boot loads. It must end in `lib/modules`:
    /// `modinfo -b` is given the folder above.
    pub modules: PathBuf,
    /// Proxmox's kernel pins (`proxmox-boot-tool kernel pin`):
    /// `proxmox-boot-pin`, and `next-boot-pin` for the next boot only.
    pub kernel_pins: PathBuf,
    /// Proxmox's container config locks (`pve-config-<vmid>.lock`): a
    /// `pct reboot` waits until the start task has let its lock go.
    pub config_locks: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            pve: "/etc/pve".into(),
            sys: "/sys".into(),
            proc: "/proc".into(),
            cache: "/var/cache/pve-nvidia-hook".into(),
            // Not /run/lock: it is writable by everyone (mode 1777).
            lock: "/run/pve-nvidia-hook".into(),
            log: "/var/log/pve-nvidia-hook".into(),
            dev: "/dev".into(),
            state: "/var/lib/pve-nvidia-hook".into(),
            local_cache: "/var/cache/pve-nvidia-hook".into(),
            storage_root: "/".into(),
            modules: "/lib/modules".into(),
            kernel_pins: "/etc/kernel".into(),
            config_locks: "/run/lock/lxc".into(),
        }
    }
}

impl Paths {
    /// The root `modinfo -b` takes for [`Paths::modules`] (it appends
    /// `lib/modules` itself); None when `modules` does not end in that.
    pub fn modules_root(&self) -> Option<&std::path::Path> {
        let lib = self.modules.parent()?;
        (self.modules.file_name()? == "modules" && lib.file_name()? == "lib")
            .then(|| lib.parent())
            .flatten()
    }
}

/// Declares the keys that apply to every container and that a container may
/// override (`containers."<vmid>"`), once: the struct and the merge come from
/// the same list.
macro_rules! layer {
    ($($(#[$doc:meta])* $key:ident: $ty:ty,)*) => {
        #[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
        pub struct Layer {
            $($(#[$doc])* pub $key: Option<$ty>,)*
        }

        impl Layer {
            /// `self` over `base`, key by key.
            fn over(&self, base: &Layer) -> Layer {
                Layer {
                    $($key: self.$key.clone().or_else(|| base.$key.clone()),)*
                }
            }
        }
    };
}

layer! {
    /// `https://`, `http://`, `file://` or an absolute path; `{version}` is the host version.
    runfile_url: String,
    /// A digest, or a map version → digest.
    runfile_sha256: DigestSpec,
    /// Flags for the driver runfile, added to the ones it always gets.
    installer_args: Vec<String>,
    /// apt packages installed in the container first.
    dependencies: Vec<String>,
    /// Purge conflicting distribution packages first.
    cleanup: bool,
    /// The CUDA toolkit runfile, toolkit only.
    cuda: CudaConfig,
    /// Run hook-triggered installs detached.
    background: bool,
    /// Install the graphics libraries too (OpenGL, EGL, GLX, and with them
    /// Vulkan); by default the install is compute-only (CUDA, OpenCL, NVENC,
    /// NVDEC), with `--no-opengl-files`.
    graphics: bool,
    /// What is restarted when processes still map the old driver after an
    /// install: `none`, `services` or `container`.
    restart_after_install: RestartAfterInstall,
}

/// What a numeric setting is: the number in the file, and what it
/// resolves to.
pub trait Unit {
    type Value: Copy + std::fmt::Debug + PartialEq + Eq;
    fn value(n: u64) -> Self::Value;
}

/// Seconds, resolved to a [`Duration`].
pub struct Secs;
/// Megabytes (10^6 bytes), resolved to bytes.
pub struct Megabytes;
/// A number of things.
pub struct Count;

impl Unit for Secs {
    type Value = Duration;
    fn value(n: u64) -> Duration {
        Duration::from_secs(n)
    }
}

impl Unit for Megabytes {
    type Value = u64;
    fn value(n: u64) -> u64 {
        n.saturating_mul(1_000_000)
    }
}

impl Unit for Count {
    type Value = u32;
    fn value(n: u64) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Declares the numeric settings once: the key in the file, the resolved
/// field, its unit and its default. Every one must be at least 1; the file
/// struct, the check and the resolved [`Limits`] come from this one list.
macro_rules! limits {
    ($($(#[$doc:meta])* $key:ident => $field:ident: $unit:ident = $default:expr,)*) => {
        /// The numeric keys as the configuration file has them.
        #[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
        pub struct LimitKeys {
            $($(#[$doc])* pub $key: Option<u64>,)*
        }

        /// The numeric settings, resolved.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Limits {
            $($(#[$doc])* pub $field: <$unit as Unit>::Value,)*
        }

        impl Default for Limits {
            fn default() -> Limits {
                Limits { $($field: $unit::value($default),)* }
            }
        }

        impl LimitKeys {
            /// The keys over the defaults; a key set to 0 is an error naming it.
            pub fn resolve(&self) -> Result<Limits, String> {
                Ok(Limits {
                    $($field: match self.$key {
                        Some(0) => return Err(format!("{}: must be at least 1", stringify!($key))),
                        Some(n) => $unit::value(n),
                        None => $unit::value($default),
                    },)*
                })
            }
        }
    };
}

limits! {
    /// At most this many installers start at once on the host (a boot with
    /// many GPU containers otherwise saturates the disk).
    max_concurrent_installs => max_concurrent_installs: Count = 2,
    /// Seconds one installer run may take before it is killed.
    installer_timeout_secs => installer_timeout: Secs = 1800,
    /// Seconds any other short command in the container (nvidia-smi,
    /// mktemp, rm) may take.
    command_timeout_secs => command_timeout: Secs = 60,
    /// Seconds a download may stall (connect, or no data) before the
    /// attempt is abandoned and retried.
    download_timeout_secs => download_timeout: Secs = 60,
    /// Seconds one download attempt may take in all.
    download_max_secs => download_max: Secs = 3600,
    /// The largest download accepted, in MB (10^6 bytes).
    max_download_mb => max_download: Megabytes = 8192,
    /// Seconds every host-side read of a container's files may take (a
    /// tenant's file system that never answers): then "cannot tell".
    read_timeout_secs => read_timeout: Secs = 5,
    /// Seconds `verify`'s whole inspection (every recorded file by CRC)
    /// may take.
    verify_timeout_secs => verify_timeout: Secs = 300,
    /// Seconds one container's install may take in all, waits included.
    install_budget_secs => install_budget: Secs = 3600,
    /// Seconds an install in the foreground waits for a free slot.
    slot_wait_secs => slot_wait: Secs = 600,
    /// Seconds an install holds its slot at most: past that, its copy and
    /// installer go on outside the cap, so that no container (whatever its
    /// programs do) delays another's install longer.
    slot_hold_secs => slot_hold: Secs = 120,
    /// Seconds the timer's `sync` leaves a container alone after its
    /// install failed for the host's version; doubled after each further
    /// failure, at most a day.
    sync_retry_secs => sync_retry: Secs = 3600,
    /// Seconds the search for a container's processes that still map the
    /// old driver may take in all.
    scan_timeout_secs => scan_timeout: Secs = 10,
}

/// `containers."<vmid>"`: whether NVIDIA is requested, and overrides.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ContainerOverrides {
    pub nvidia: Option<bool>,
    #[serde(flatten)]
    pub layer: Layer,
    /// Whatever is left: unknown keys, refused by [`parse`].
    #[serde(flatten)]
    unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub layer: Layer,
    /// Accept a runfile without a trusted digest (plain http without
    /// `runfile_sha256`, or https where NVIDIA publishes no `.sha256sum`).
    pub allow_unverified_download: bool,
    /// The numeric settings, as the file has them; resolved in `limits`.
    #[serde(flatten)]
    pub limit_keys: LimitKeys,
    /// The numeric settings resolved and checked at load.
    #[serde(skip)]
    pub limits: Limits,
    /// What the admin is told of through Proxmox's notifications.
    pub notify: NotifyMode,
    pub containers: BTreeMap<String, ContainerOverrides>,
    pub phoenix_config: Option<PathBuf>,
    pub paths: Paths,
    /// Whatever is left: unknown keys, refused by [`parse`].
    #[serde(flatten)]
    unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

/// Where the configuration came from, for messages and permission checks.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// None when the default file is absent and all defaults apply.
    pub file: Option<PathBuf>,
}

impl Config {
    pub fn overrides(&self, vmid: Vmid) -> Option<&ContainerOverrides> {
        self.containers.get(&vmid.to_string())
    }

    /// The settings for one container: its overrides over the global keys
    /// over the defaults.
    pub fn settings_for(&self, vmid: Vmid, phoenix_url: Option<String>) -> Settings {
        let mut own = self
            .overrides(vmid)
            .map(|o| o.layer.clone())
            .unwrap_or_default();
        // The Phoenix entry's URL sits between the container's own and the global one.
        own.runfile_url = own.runfile_url.or(phoenix_url);
        self.resolve(&own)
    }

    /// The global keys over the defaults: what a container without
    /// overrides gets.
    pub fn global_settings(&self) -> Settings {
        self.resolve(&Layer::default())
    }

    fn resolve(&self, own: &Layer) -> Settings {
        let l = own.over(&self.layer);
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Settings {
            runfile_url: l.runfile_url,
            runfile_sha256: l.runfile_sha256,
            installer_args: l.installer_args.unwrap_or_default(),
            dependencies: l
                .dependencies
                .unwrap_or_else(|| strings(&DEFAULT_DEPENDENCIES)),
            cleanup: l.cleanup.unwrap_or(true),
            cuda: l.cuda,
            background: l.background.unwrap_or(true),
            graphics: l.graphics.unwrap_or(false),
            restart_after_install: l.restart_after_install.unwrap_or_default(),
            allow_unverified_download: self.allow_unverified_download,
            limits: self.limits,
        }
    }
}

/// The resolved settings for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub runfile_url: Option<String>,
    pub runfile_sha256: Option<DigestSpec>,
    /// What the configuration adds to the driver installer's own flags
    /// ([`installer_args::driver_args`]).
    pub installer_args: Vec<String>,
    pub dependencies: Vec<String>,
    pub cleanup: bool,
    pub cuda: Option<CudaConfig>,
    pub background: bool,
    pub graphics: bool,
    pub restart_after_install: RestartAfterInstall,
    pub allow_unverified_download: bool,
    pub limits: Limits,
}

impl Settings {
    /// The driver installer's arguments: the required ones, the defaults,
    /// the configured ones, and compute-only's flags unless `graphics` is
    /// on; with it, `--install-libglvnd` where the container's libglvnd is
    /// absent or incomplete.
    pub fn driver_args(&self, install_libglvnd: bool) -> Vec<String> {
        installer_args::driver_args(&self.installer_args, self.graphics, install_libglvnd)
    }

    /// The apt packages to have in the container: the configured ones, and
    /// the graphics libraries' when `graphics` is on.
    pub fn all_dependencies(&self) -> Vec<String> {
        let mut deps = self.dependencies.clone();
        if self.graphics {
            deps.extend(GRAPHICS_DEPENDENCIES.iter().map(|s| s.to_string()));
        }
        deps
    }

    /// Candidate URLs for a host version, in the order they are tried.
    pub fn runfile_urls(&self, version: &DriverVersion) -> Vec<String> {
        let v = version.to_string();
        match &self.runfile_url {
            Some(url) => vec![url.replace("{version}", &v)],
            None => DEFAULT_RUNFILE_URLS
                .iter()
                .map(|u| u.replace("{version}", &v))
                .collect(),
        }
    }

    /// The configured digest for this version, lower-cased.
    pub fn configured_digest(&self, version: &DriverVersion) -> Option<String> {
        match &self.runfile_sha256 {
            Some(DigestSpec::One(d)) => Some(d.to_ascii_lowercase()),
            Some(DigestSpec::PerVersion(map)) => map
                .get(&version.to_string())
                .map(|d| d.to_ascii_lowercase()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::load::parse;
    use super::*;

    fn vmid(n: u32) -> Vmid {
        Vmid::try_from(n).unwrap()
    }

    #[test]
    fn empty_object_means_defaults() {
        let c = parse("{}").unwrap();
        let s = c.settings_for(vmid(101), None);
        assert!(s.cleanup && s.background);
        assert!(s.installer_args.is_empty());
        let args = s.driver_args(false);
        assert!(
            args.iter().any(|a| a == NO_OPENGL_FILES),
            "compute-only by default: {args:?}"
        );
        assert_eq!(s.all_dependencies(), DEFAULT_DEPENDENCIES);
        assert_eq!(s.limits.max_concurrent_installs, 2);
        assert_eq!(s.limits.read_timeout, Duration::from_secs(5));
        assert_eq!(c.notify, NotifyMode::Errors);
        assert_eq!(
            parse(r#"{"notify": "all"}"#).unwrap().notify,
            NotifyMode::All
        );
        assert_eq!(
            parse(r#"{"notify": "off"}"#).unwrap().notify,
            NotifyMode::Off
        );
        let v: DriverVersion = "550.54.14".parse().unwrap();
        assert_eq!(
            s.runfile_urls(&v)[0],
            "https://download.nvidia.com/XFree86/Linux-x86_64/550.54.14/NVIDIA-Linux-x86_64-550.54.14.run"
        );
        assert_eq!(s.runfile_urls(&v).len(), 2);
    }

    #[test]
    fn container_overrides_win() {
        let c = parse(
            r#"{"background": true, "cleanup": false,
                "runfile_sha256": {"550.54.14": "AA00000000000000000000000000000000000000000000000000000000000000"},
                "containers": {"101": {"nvidia": true, "background": false, "runfile_url": "/srv/NVIDIA-Linux-x86_64-{version}.run"}}}"#,
        )
        .unwrap();
        let s = c.settings_for(vmid(101), None);
        assert!(!s.background && !s.cleanup);
        let v: DriverVersion = "550.54.14".parse().unwrap();
        assert_eq!(
            s.runfile_urls(&v),
            ["/srv/NVIDIA-Linux-x86_64-550.54.14.run"]
        );
        assert_eq!(
            s.configured_digest(&v).unwrap(),
            format!("aa{}", "0".repeat(62))
        );
        assert!(c.settings_for(vmid(102), None).background);
    }

    #[test]
    fn restarts_and_the_modules_root() {
        let c = parse(
            r#"{"restart_after_install": "services",
                "containers": {"101": {"restart_after_install": "container"}, "102": {"restart_after_install": "none"}},
                "paths": {"modules": "/srv/fake/lib/modules"}}"#,
        )
        .unwrap();
        let restart = |n| c.settings_for(vmid(n), None).restart_after_install;
        assert_eq!(restart(101), RestartAfterInstall::Container);
        assert_eq!(restart(102), RestartAfterInstall::Nothing);
        assert_eq!(restart(103), RestartAfterInstall::Services);
        assert_eq!(
            parse("{}").unwrap().global_settings().restart_after_install,
            RestartAfterInstall::Nothing
        );
        assert_eq!(
            c.paths.modules_root(),
            Some(std::path::Path::new("/srv/fake"))
        );
        assert_eq!(
            Paths::default().modules_root(),
            Some(std::path::Path::new("/"))
        );
        let err = format!(
            "{:#}",
            parse(r#"{"paths": {"modules": "/srv/modules"}}"#).unwrap_err()
        );
        assert!(err.contains("paths.modules"), "{err}");
        assert!(parse(r#"{"restart_after_install": "sometimes"}"#).is_err());
    }

    #[test]
    fn shipped_example_is_valid() {
        let c = parse(include_str!("../../examples/config.json")).unwrap();
        let s = c.settings_for(vmid(101), None);
        assert!(s.cuda.is_some());
        assert!(!c.settings_for(vmid(102), None).background);
        assert_eq!(c.overrides(vmid(103)).and_then(|o| o.nvidia), Some(false));
    }
}
