//! The host context every command works in: the loaded configuration, the
//! host, the locks and results, and resolving a container: its Proxmox
//! config, whether NVIDIA is requested, its settings, and access to its root
//! file system while it runs.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::{self, Config, Settings};
use crate::container::probe::Probe;
use crate::decision::{self, Request};
use crate::error::usage;
use crate::host::Host;
use crate::pct_config::{PctConfig, MAX_CONFIG_BYTES};
use crate::process::{self, Limits};
use crate::runfile::{self, Cache, Fetcher};
use crate::state::{Locks, Results};
use crate::version::DriverVersion;
use crate::vmid::Vmid;

pub struct Ctx {
    pub loaded: config::Loaded,
    pub host: Host,
    pub locks: Locks,
    pub results: Results,
}

pub enum Lookup {
    Container(Box<Target>),
    /// A QEMU guest: hookscripts are shared between both kinds.
    Vm,
    Missing,
}

pub struct Target {
    pub vmid: Vmid,
    pub pct: PctConfig,
    pub request: Request,
    pub settings: Settings,
}

impl Ctx {
    pub fn load(path: Option<&Path>) -> Result<Ctx> {
        let loaded = config::load(path)?;
        let p = &loaded.config.paths;
        Ok(Ctx {
            host: Host::new(&p.sys, &p.proc),
            locks: Locks::new(&p.lock),
            results: Results::new(&p.state),
            loaded,
        })
    }

    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// This node's container (or VM) `vmid`.
    pub fn lookup(&self, vmid: Vmid) -> Result<Lookup> {
        self.lookup_read(vmid, read_guest(&self.config().paths.pve, vmid)?)
    }

    /// This node's container `vmid`, from its config as [`read_guest`]
    /// read it.
    pub fn lookup_read(&self, vmid: Vmid, guest: Guest) -> Result<Lookup> {
        match guest {
            Guest::Container { path, pct } => self.resolve(vmid, &path, pct),
            Guest::Vm => Ok(Lookup::Vm),
            Guest::Missing => Ok(Lookup::Missing),
        }
    }

    /// Container `vmid` on any node of the cluster.
    pub fn lookup_on(&self, node: &str, vmid: Vmid) -> Result<Lookup> {
        let path = self
            .config()
            .paths
            .pve
            .join(format!("nodes/{node}/lxc/{vmid}.conf"));
        match read_bounded(&path)? {
            Some(text) => self.resolve(vmid, &path, PctConfig::parse(&text)),
            None => Ok(Lookup::Missing),
        }
    }

    /// Every container of the cluster, with its node (this node's alone
    /// when there is no cluster file system).
    pub fn cluster_containers(&self) -> Result<Vec<(String, Vmid)>> {
        let pve = &self.config().paths.pve;
        let nodes = crate::cluster::nodes(pve);
        if nodes.is_empty() {
            let node = crate::cluster::node_name(pve);
            return Ok(self
                .all_containers()?
                .into_iter()
                .map(|v| (node.clone(), v))
                .collect());
        }
        let mut all = Vec::new();
        for node in nodes {
            for vmid in list_configs(&pve.join(format!("nodes/{node}/lxc")))? {
                all.push((node.clone(), vmid));
            }
        }
        all.sort_by_key(|(_, v)| *v);
        Ok(all)
    }

    /// The config text of a container as [`Self::cluster_containers`] lists
    /// it, unparsed: for what any of its sections names.
    pub fn config_text_on(&self, node: &str, vmid: Vmid) -> Result<Option<String>> {
        let pve = &self.config().paths.pve;
        if crate::cluster::nodes(pve).is_empty() {
            read_bounded(&pve.join(format!("lxc/{vmid}.conf")))
        } else {
            read_bounded(&pve.join(format!("nodes/{node}/lxc/{vmid}.conf")))
        }
    }

    fn resolve(&self, vmid: Vmid, path: &Path, pct: PctConfig) -> Result<Lookup> {
        if pct.skipped_lines > 0 {
            log::debug!(
                "{}: skipped {} unparsable line(s)",
                path.display(),
                pct.skipped_lines
            );
        }
        let config_says = self.config().overrides(vmid).and_then(|o| o.nvidia);
        let phoenix = match (&self.config().phoenix_config, config_says) {
            (Some(file), None) => Some(config::read_phoenix(file, vmid)?),
            _ => None,
        };
        let request = decision::requested(
            config_says,
            phoenix.as_ref().is_some_and(|p| p.requested),
            &pct,
        );
        let settings = self
            .config()
            .settings_for(vmid, phoenix.and_then(|p| p.runfile_url));
        Ok(Lookup::Container(Box::new(Target {
            vmid,
            pct,
            request,
            settings,
        })))
    }

    /// The container or a usage error (a VM, or no config at all).
    pub fn container(&self, vmid: Vmid) -> Result<Target> {
        match self.lookup(vmid)? {
            Lookup::Container(t) => Ok(*t),
            Lookup::Vm => Err(usage(format!(
                "{vmid} is a virtual machine, not a container"
            ))),
            Lookup::Missing => Err(usage(self.not_here(vmid))),
        }
    }

    /// Runfiles for `settings`, through this node's cache (the shared one,
    /// or its own where the shared one cannot be used), with progress to `log`.
    pub fn fetcher<'a>(&'a self, settings: &Settings, log: &'a dyn Fn(&str)) -> Fetcher<'a> {
        let paths = &self.config().paths;
        Fetcher {
            cache: Cache {
                dir: paths.cache.clone(),
                fallback: (paths.local_cache != paths.cache).then(|| paths.local_cache.clone()),
            },
            locks: &self.locks,
            allow_unverified: settings.allow_unverified_download,
            limits: runfile::limits(
                settings.limits.download_timeout,
                settings.limits.download_max,
                settings.limits.max_download,
            ),
            log,
        }
    }

    /// Why `vmid` is no container of this node: the node whose folder in
    /// the cluster file system (`nodes/<node>/lxc`, `qemu-server`) holds
    /// it, which is where commands for it must run; or that there is none.
    pub fn not_here(&self, vmid: Vmid) -> String {
        let pve = &self.config().paths.pve;
        let this = crate::cluster::node_name(pve);
        let found = crate::cluster::nodes(pve)
            .into_iter()
            .filter(|n| *n != this)
            .find_map(|node| {
                let on = |kind: &str| {
                    pve.join(format!("nodes/{node}/{kind}/{vmid}.conf"))
                        .exists()
                };
                if on("lxc") {
                    Some(format!("CT {vmid} is on node {node}: run this there"))
                } else if on("qemu-server") {
                    Some(format!(
                        "{vmid} is a virtual machine on node {node}, not a container"
                    ))
                } else {
                    None
                }
            });
        found.unwrap_or_else(|| {
            format!(
                "no container {vmid} on this node ({this}): {} does not exist",
                pve.join(format!("lxc/{vmid}.conf")).display()
            )
        })
    }

    pub fn host_version(&self) -> Result<Option<DriverVersion>> {
        Ok(self.host.driver_version()?.map(|(v, _)| v))
    }

    /// The door to the running container's files; None when it is
    /// stopped. Each read through it runs in a child with the configured
    /// deadline (`read_timeout_secs`); between reads nothing of ours holds
    /// any of the container's file systems.
    pub fn open_container(&self, vmid: Vmid) -> Result<Option<Probe>> {
        let init = match self.host.container_init(vmid) {
            Some(init) => init,
            None => match lxc_info_pid(vmid).and_then(|pid| self.host.init_at(vmid, pid)) {
                Some(init) => init,
                None => return Ok(None),
            },
        };
        let proc_dir = self
            .host
            .proc_dir(init.pid)
            .with_context(|| format!("CT {vmid}: opening /proc/{} of its init", init.pid))?;
        // The pidfd names the process that was checked: if it is still
        // alive, the folder opened is that process's.
        if !init.alive() {
            bail!(
                "CT {vmid}: its init (pid {}) exited while being opened",
                init.pid
            );
        }
        let marker = self.config().paths.lock.join(format!("{vmid}.reader-left"));
        Ok(Some(
            Probe::new(init, proc_dir, self.config().limits.read_timeout).remembering(marker),
        ))
    }

    /// Every container config of this node, by vmid.
    pub fn all_containers(&self) -> Result<Vec<Vmid>> {
        list_configs(&self.config().paths.pve.join("lxc"))
    }
}

/// A guest's config as this node has it, read once.
pub enum Guest {
    Container {
        path: PathBuf,
        pct: PctConfig,
    },
    /// A QEMU guest: hookscripts are shared between both kinds.
    Vm,
    Missing,
}

/// `<pve>/lxc/<vmid>.conf`, read (bounded) and parsed; or that `vmid` is a
/// VM's, or nobody's. Needs nothing of this tool's configuration but where
/// `/etc/pve` is: the hook reads it before its configuration (for a
/// chained hookscript, which must run whatever became of that).
pub fn read_guest(pve: &Path, vmid: Vmid) -> Result<Guest> {
    let path = pve.join(format!("lxc/{vmid}.conf"));
    Ok(match read_bounded(&path)? {
        Some(text) => Guest::Container {
            pct: PctConfig::parse(&text),
            path,
        },
        None if pve.join(format!("qemu-server/{vmid}.conf")).exists() => Guest::Vm,
        None => Guest::Missing,
    })
}

/// The vmids of the `<vmid>.conf` files in a folder, sorted.
fn list_configs(dir: &Path) -> Result<Vec<Vmid>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut vmids: Vec<Vmid> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".conf")?.parse().ok())
        .collect();
    vmids.sort();
    Ok(vmids)
}

/// `lxc-info -p -H`: the one program run to find a container's init when its
/// cgroup layout is not one we know.
fn lxc_info_pid(vmid: Vmid) -> Option<u32> {
    let program = process::find_program("lxc-info")?;
    let out = process::run(
        &program,
        &["-n", &vmid.to_string(), "-p", "-H"],
        Limits::quick(std::time::Duration::from_secs(10)),
    )
    .ok()?;
    if !out.success() {
        return None;
    }
    out.stdout_text().trim().parse().ok()
}

fn read_bounded(path: &Path) -> Result<Option<String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut bytes = Vec::with_capacity(16 * 1024);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        bail!(
            "{}: larger than {} bytes, not a Proxmox config",
            path.display(),
            MAX_CONFIG_BYTES
        );
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}
