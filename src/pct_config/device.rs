//! `devN:` passthrough entries as pve-container reads them:
//! `PVE::LXC::Config::parse_device`, i.e. pve-common's
//! `parse_property_string` with `$dev_desc`. A value Proxmox cannot parse
//! makes `update_lxc_config` die inside `vm_start`: the container does not
//! start, before any hook runs.

/// A `devN:` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: usize,
    pub path: String,
    /// `mode`, `$dev_desc`'s pattern `0[0-7]{3}`.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `deny-write=1`: Proxmox allows the node `r` only (and denies `w`).
    pub deny_write: bool,
    /// The whole value, to repeat it in a fix.
    pub value: String,
}

impl Device {
    /// The value with one option left out (to repeat it in a fix).
    pub fn value_without(&self, option: &str) -> String {
        self.value
            .split(',')
            .filter(|o| o.split_once('=').is_none_or(|(k, _)| k != option))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `parse_property_string($dev_desc, value)`: `path` is the default key;
/// a key twice, an unknown key or a value that fails its schema is an error
/// (Proxmox's message, as far as it matters).
pub fn parse(index: usize, value: &str) -> Result<Device, String> {
    let mut device = Device {
        index,
        path: String::new(),
        mode: None,
        uid: None,
        gid: None,
        deny_write: false,
        value: value.to_string(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in value.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        // `^([^=]+)=(.+)$`, else a bare value for the default key.
        let (key, v) = match part.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => (k, v),
            Some(_) => return Err("missing key in comma-separated list property".into()),
            None => ("path", part),
        };
        if seen.contains(&key) {
            return Err(format!(
                "duplicate key in comma-separated list property: {key}"
            ));
        }
        seen.push(key);
        let bad = |what: &str| format!("format error: {key}: {what} - got '{v}'");
        match key {
            "path" => device.path = v.to_string(),
            "mode" => {
                let ok = v.len() == 4
                    && v.starts_with('0')
                    && v.bytes().skip(1).all(|b| (b'0'..=b'7').contains(&b));
                if !ok {
                    return Err(bad("value does not match the regex pattern 0[0-7]{3}"));
                }
                device.mode = u32::from_str_radix(v, 8).ok();
            }
            "uid" | "gid" => {
                let id = v
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(|| bad("type check ('integer') failed"))?;
                if key == "uid" {
                    device.uid = Some(id);
                } else {
                    device.gid = Some(id);
                }
            }
            "deny-write" => {
                device.deny_write = match v.to_ascii_lowercase().as_str() {
                    "1" | "on" | "yes" | "true" => true,
                    "0" | "off" | "no" | "false" => false,
                    _ => return Err(bad("type check ('boolean') failed")),
                }
            }
            _ => {
                return Err(format!(
                    "invalid key in comma-separated list property: {key}"
                ))
            }
        }
    }
    if device.path.is_empty() {
        return Err("Path has to be defined".into());
    }
    // `verify_lxc_dev_string`: below /dev/, no `.` or `..` component.
    let dotted = device.path.split('/').any(|c| c == "." || c == "..");
    if !device.path.starts_with("/dev/") || dotted {
        return Err(format!("{} is not a valid device path", device.path));
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_as_parse_device_reads_them() {
        let d = parse(0, "/dev/nvidia0,gid=44,mode=0666,deny-write=1").unwrap();
        assert_eq!(
            (d.path.as_str(), d.mode, d.gid, d.uid, d.deny_write),
            ("/dev/nvidia0", Some(0o666), Some(44), None, true)
        );
        assert_eq!(d.value_without("mode"), "/dev/nvidia0,gid=44,deny-write=1");
        assert_eq!(
            parse(1, "path=/dev/nvidiactl").unwrap().path,
            "/dev/nvidiactl"
        );
        assert!(!parse(1, "/dev/nvidia1,deny-write=off").unwrap().deny_write);
        for (value, error) in [
            ("/dev/nvidia0,mode=666", "0[0-7]{3}"),
            ("/dev/nvidia0,mode=00666", "0[0-7]{3}"),
            ("/dev/nvidia0,mode=0686", "0[0-7]{3}"),
            ("/dev/nvidia0,uid=-1", "integer"),
            ("/dev/nvidia0,deny-write=maybe", "boolean"),
            ("/dev/nvidia0,optional=1", "invalid key"),
            ("/dev/nvidia0,path=/dev/nvidia1", "duplicate key"),
            ("/dev/nvidia0,mode=", "missing key"),
            ("mode=0666", "Path has to be defined"),
            ("/tmp/nvidia0", "not a valid device path"),
            ("/dev/../etc/passwd", "not a valid device path"),
        ] {
            let e = parse(0, value).unwrap_err();
            assert!(e.contains(error), "{value}: {e}");
        }
    }
}
