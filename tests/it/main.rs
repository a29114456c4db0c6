//! Integration tests: they run the built binary.
//! `fake_host` drives it against a fake host and fake containers (stand-ins
//! on PATH); `e2e*` against real LXC containers on the `sandbox`, and
//! `package` installs the built .deb into one (root only).

mod chain;
mod ci_deps;
mod cli;
mod device_access;
mod devices;
mod e2e;
mod e2e_cluster;
mod e2e_devices;
mod e2e_docker;
mod e2e_driver;
mod e2e_hostile;
mod e2e_installer;
mod e2e_lifecycle;
mod e2e_notify;
mod e2e_operator;
mod e2e_passthrough;
mod e2e_upgrades;
mod fake_host;
mod faults;
mod hook;
mod hostile;
mod install;
mod installer;
mod notify;
mod operator;
mod package;
mod passthrough;
mod proxmox;
mod sandbox;
mod standins;
mod support;
mod upgrades;
