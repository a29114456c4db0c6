//! Reading the configuration file as a trusted one, and validating it: a
//! key that is unknown, of the wrong type or with a bad value is an error
//! naming the file and the key.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Config, DigestSpec, Layer, Loaded, Paths, DEFAULT_CONFIG_PATH, NO_OPENGL_FILES};
use crate::error::usage;
use crate::fsutil;
use crate::version::DriverVersion;
use crate::vmid::Vmid;

/// The configuration decides what runs as root in every GPU container, so
/// it is trusted only as opened: one open, no symlink followed, a regular
/// file of root's that group and others cannot write, in folders that only
/// root can change (see [`fsutil::open_trusted`]). Nothing it names is
/// read or run before that.
pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let text = match read_trusted(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok(Loaded {
                config: Config::default(),
                file: None,
            })
        }
        Err(e) => return Err(usage(format!("config {}: {e}", path.display()))),
    };
    let config = parse(&text).map_err(|e| usage(format!("config {}: {e:#}", path.display())))?;
    Ok(Loaded {
        config,
        file: Some(path),
    })
}

/// Where things are, from a configuration that does not load as a whole (a
/// key unknown, a value bad): its `paths` when the file is trusted and they
/// parse, else the defaults. For the hook's chained hookscript alone, which
/// must run whatever became of the rest of this tool's configuration.
pub fn paths_anyway(explicit: Option<&Path>) -> Paths {
    let path = explicit.map_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH), Path::to_path_buf);
    read_trusted(&path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|value| serde_json::from_value(value.get("paths")?.clone()).ok())
        .unwrap_or_default()
}

/// A configuration file is small; more is not one.
const MAX_CONFIG: u64 = 1 << 20;

pub(super) fn read_trusted(path: &Path) -> std::io::Result<String> {
    let (file, meta) = fsutil::open_trusted(path)?;
    let mut text = String::with_capacity(meta.len().min(MAX_CONFIG) as usize + 1);
    file.take(MAX_CONFIG).read_to_string(&mut text)?;
    Ok(text)
}

pub fn parse(text: &str) -> Result<Config> {
    if text.trim().is_empty() {
        anyhow::bail!("the file is empty (write {{}} for all defaults)");
    }
    let mut config: Config = serde_json::from_str(text)?;
    config.validate()?;
    config.limits = config.limit_keys.resolve().map_err(anyhow::Error::msg)?;
    Ok(config)
}

impl Config {
    fn validate(&self) -> Result<()> {
        refuse_unknown("", &self.unknown)?;
        validate_layer("", &self.layer)?;
        if self.paths.modules_root().is_none() {
            anyhow::bail!(
                "paths.modules: '{}' does not end in lib/modules (where modinfo looks)",
                self.paths.modules.display()
            );
        }
        for (key, overrides) in &self.containers {
            key.parse::<Vmid>()
                .map_err(|e| anyhow::anyhow!("containers: key {e}"))?;
            let prefix = format!("containers.\"{key}\".");
            refuse_unknown(&prefix, &overrides.unknown)?;
            validate_layer(&prefix, &overrides.layer)?;
        }
        Ok(())
    }
}

fn refuse_unknown(prefix: &str, unknown: &BTreeMap<String, serde::de::IgnoredAny>) -> Result<()> {
    match unknown.keys().next() {
        Some(key) => anyhow::bail!("{prefix}unknown field `{}`", key.escape_debug()),
        None => Ok(()),
    }
}

fn validate_layer(prefix: &str, layer: &Layer) -> Result<()> {
    let (url, digest, cuda) = (&layer.runfile_url, &layer.runfile_sha256, &layer.cuda);
    if layer.graphics == Some(true)
        && layer
            .installer_args
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == NO_OPENGL_FILES))
    {
        anyhow::bail!("{prefix}installer_args: {NO_OPENGL_FILES} contradicts graphics: true (leave it out: graphics decides it)");
    }
    if let Some(args) = &layer.installer_args {
        super::installer_args::check(args)
            .map_err(|e| anyhow::anyhow!("{prefix}installer_args: {e}"))?;
    }
    if let Some(deps) = &layer.dependencies {
        if let Some(bad) = deps
            .iter()
            .find(|d| !crate::container::dpkg::is_package_name(d))
        {
            anyhow::bail!(
                "{prefix}dependencies: '{}' is not a Debian package name",
                bad.escape_debug()
            );
        }
    }
    if let Some(url) = url {
        check_url(url).with_context(|| format!("{prefix}runfile_url"))?;
    }
    match digest {
        Some(DigestSpec::One(d)) => {
            check_digest(d).with_context(|| format!("{prefix}runfile_sha256"))?
        }
        Some(DigestSpec::PerVersion(map)) => {
            for (version, d) in map {
                version
                    .parse::<DriverVersion>()
                    .map_err(|e| anyhow::anyhow!("{prefix}runfile_sha256: key {e}"))?;
                check_digest(d).with_context(|| format!("{prefix}runfile_sha256.\"{version}\""))?;
            }
        }
        None => {}
    }
    if let Some(cuda) = cuda {
        check_url(&cuda.runfile_url).with_context(|| format!("{prefix}cuda.runfile_url"))?;
        if let Some(d) = &cuda.sha256 {
            check_digest(d).with_context(|| format!("{prefix}cuda.sha256"))?;
        }
    }
    Ok(())
}

pub(super) fn check_url(url: &str) -> Result<()> {
    let ok = ["https://", "http://", "file:///"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    }) || (url.starts_with('/') && url.len() > 1);
    if !ok {
        anyhow::bail!("'{url}' is not an https://, http://, file:/// URL or an absolute path");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "'{}' contains whitespace or control characters",
            url.escape_debug()
        );
    }
    let name = url.rsplit('/').next().unwrap_or_default();
    if name.is_empty() {
        anyhow::bail!("'{url}' does not end in a file name");
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<()> {
    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("'{d}' is not a sha256 digest (64 hex digits)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("", "empty"),
            ("{", "EOF"),
            (r#"{"bogus": 1}"#, "unknown field `bogus`"),
            (r#"{"cleanup": "yes"}"#, "invalid type"),
            (r#"{"runfile_url": "ftp://x/y.run"}"#, "runfile_url"),
            (r#"{"runfile_url": "https://x/"}"#, "file name"),
            (r#"{"runfile_sha256": "abc"}"#, "runfile_sha256"),
            (
                r#"{"runfile_sha256": {"550": "abc"}}"#,
                "runfile_sha256: key",
            ),
            (r#"{"containers": {"abc": {}}}"#, "containers: key"),
            (
                r#"{"containers": {"101": {"nvidia": true, "paths": {}}}}"#,
                "unknown field `paths`",
            ),
            (r#"{"paths": {"tmp": "/x"}}"#, "unknown field `tmp`"),
            (
                r#"{"cuda": {"runfile_url": "relative.run"}}"#,
                "cuda.runfile_url",
            ),
            (
                r#"{"max_concurrent_installs": 0}"#,
                "max_concurrent_installs",
            ),
            (
                r#"{"notify": "loud"}"#,
                "unknown variant `loud`, expected one of `errors`, `all`, `off`",
            ),
            (
                r#"{"installer_args": ["--no-such-flag"]}"#,
                "installer_args: '--no-such-flag' is not an nvidia-installer option",
            ),
            (
                r#"{"containers": {"101": {"installer_args": ["--tmpdir", "/x"]}}}"#,
                "containers.\"101\".installer_args: '--tmpdir' is not allowed",
            ),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
