//! Where the runfile for the host's version will come from, and whether an
//! install will accept it: a pinned digest, NVIDIA's `.sha256sum` (published
//! on its public driver path, not on the datacenter `tesla/` path), or the
//! admin's own file. Warned ahead of time, not at the first start after a
//! driver upgrade.

use std::collections::BTreeMap;

use super::{Level, Report};
use crate::context::Target;
use crate::runfile::{self, Source};
use crate::version::DriverVersion;

/// What was already asked of NVIDIA's servers, by URL.
pub(super) type Asked = BTreeMap<String, Result<bool, String>>;

pub(super) fn checks(
    target: &Target,
    host: &DriverVersion,
    asked: &mut Asked,
    report: &mut Report,
    scope: &str,
) {
    let settings = &target.settings;
    let pin = runfile::pin_hint(&host.to_string());
    if settings.configured_digest(host).is_some() {
        report.add(
            scope,
            "runfile",
            Level::Ok,
            format!("the digest of {host} is pinned"),
            None,
        );
        return;
    }
    let sources: Vec<Source> = settings
        .runfile_urls(host)
        .iter()
        .filter_map(|u| Source::parse(u).ok())
        .collect();
    let unverified = settings.allow_unverified_download;
    let (level, detail) = match sources.first() {
        Some(Source::Local(path)) => (
            Level::Ok,
            format!(
                "{} is the admin's own file (a digest is optional)",
                path.display()
            ),
        ),
        Some(Source::Http(_)) if unverified => (
            Level::Warn,
            "plain http without a pinned digest: downloads are accepted unverified".to_string(),
        ),
        Some(Source::Http(_)) => (
            Level::Fail,
            format!("plain http without a pinned digest: the install of {host} will be refused"),
        ),
        Some(Source::Https(_)) => {
            let mut found = None;
            let mut unreachable = Vec::new();
            for source in &sources {
                let Source::Https(url) = source else { continue };
                let answer = asked.entry(url.clone()).or_insert_with(|| {
                    runfile::publishes_digest(url).map_err(|e| format!("{e:#}"))
                });
                match answer {
                    Ok(true) => {
                        found = Some(source.shown());
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => unreachable.push(e.clone()),
                }
            }
            match (found, unreachable.is_empty()) {
                (Some(url), _) => (Level::Ok, format!("NVIDIA publishes {url}.sha256sum")),
                (None, false) => (
                    Level::Warn,
                    format!("could not ask for NVIDIA's .sha256sum: {}", unreachable.join("; ")),
                ),
                (None, true) if unverified => (
                    Level::Warn,
                    format!("NVIDIA publishes no .sha256sum for {host}: downloads are accepted unverified"),
                ),
                (None, true) => (
                    Level::Fail,
                    format!(
                        "NVIDIA publishes no .sha256sum for {host} (the datacenter path has none): the install will be refused"
                    ),
                ),
            }
        }
        None => (Level::Fail, "no runfile URL".to_string()),
    };
    let fix = (level != Level::Ok).then(|| pin.clone());
    report.add(scope, "runfile", level, detail, fix);
}
