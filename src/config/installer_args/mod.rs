//! nvidia-installer's command line, as its own sources define it, for the
//! driver runfile's `installer_args`: what the hook always passes, what it
//! passes unless told otherwise, and which configured options the installer
//! would refuse ("Invalid commandline") or that would stop it from
//! installing the driver.
//!
//! The table is `option_table.h` of nvidia-installer, read for every
//! release from 470.42.01 to 590.48.01 (NVIDIA/nvidia-installer's tags),
//! parsed as its `nvgetopt.c` parses: `--name`, `--name=value` or
//! `--name value` for an option with an argument, `--no-name` for a boolean
//! one, `-x` short options (several may share one dash when none takes an
//! argument). An option appears in the releases from `since` on.

mod table;

use crate::version::DriverVersion;
use table::{Opt, Takes, OPTIONS, REFUSED};

/// Always passed: no question asked, no kernel module (the host's is
/// loaded). `--no-kernel-module`, singular: every release from 470 knows it
/// (from 515 a hidden alias of `--no-kernel-modules`, which 470 lacks).
pub const REQUIRED: [&str; 2] = ["--silent", "--no-kernel-module"];

/// Passed unless `installer_args` names the option itself: no X server or
/// nouveau to look for in a container, and no systemd units (the
/// suspend/hibernate units are the host's business; without systemd
/// running, `systemctl daemon-reload` fails and the installer logs an
/// `ERROR:`).
pub const DEFAULTS: [&str; 3] = ["--no-x-check", "--no-nouveau-check", "--no-systemd"];

/// Compute-only: no OpenGL, EGL or GLX files, and no 32-bit libraries.
pub const COMPUTE_ONLY: [&str; 2] = ["--no-opengl-files", "--no-install-compat32-libs"];

/// One option of the command line, as nvgetopt reads it.
struct Word {
    opt: &'static Opt,
    negated: bool,
}

fn by_name(name: &str) -> Option<Word> {
    if let Some(o) = OPTIONS.iter().find(|o| o.name == name) {
        return Some(Word {
            opt: o,
            negated: false,
        });
    }
    let plain = name.strip_prefix("no-")?;
    let o = OPTIONS.iter().find(|o| o.name == plain)?;
    matches!(o.takes, Takes::Boolean { .. }).then_some(Word {
        opt: o,
        negated: true,
    })
}

fn short(c: char) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.short == Some(c))
}

/// `strtol(s, &end, 0)` reading all of `s`: decimal, `0x` hex or `0` octal.
fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (digits, radix) = match digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if digits.len() > 1 && digits.starts_with('0') => (&digits[1..], 8),
        None => (digits, 10),
    };
    !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix))
}

fn release(v: [u32; 3]) -> String {
    format!("{}.{}.{:02}", v[0], v[1], v[2])
}

/// One word of `args` as nvgetopt reads it: the options it names, and
/// whether the next word is the last one's value.
fn read_word(arg: &str) -> Result<(Vec<Word>, bool), String> {
    let shown = crate::logging::bounded(arg, 80);
    let unknown =
        || format!("'{shown}' is not an nvidia-installer option (option_table.h, 470 to 590)");
    let (body, dashes) = match arg.strip_prefix("--") {
        Some(body) => (body, 2),
        None => match arg.strip_prefix('-') {
            Some(body) => (body, 1),
            None => {
                return Err(format!(
                    "'{shown}' is not an option (nvidia-installer takes no other words)"
                ))
            }
        },
    };
    let (name, inline) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    if name.is_empty() {
        return Err(if dashes == 2 && inline.is_none() {
            format!("'{shown}' ends nvidia-installer's options: the hook's own after it would be ignored")
        } else {
            unknown()
        });
    }
    let mut chars = name.chars();
    let words: Vec<Word> = match (chars.next(), chars.next()) {
        // One letter, with one dash or two, is a short option.
        (Some(c), None) => vec![Word {
            opt: short(c).ok_or_else(unknown)?,
            negated: false,
        }],
        _ => match by_name(name) {
            Some(word) => vec![word],
            None => {
                let letters: Option<Vec<&'static Opt>> = name.chars().map(short).collect();
                match letters {
                    // Letters that are each a short option; only the last
                    // may take a value (nvgetopt takes them one at a time).
                    Some(opts)
                        if inline.is_none()
                            && opts[..opts.len() - 1]
                                .iter()
                                .all(|o| o.takes != Takes::Value) =>
                    {
                        opts.into_iter()
                            .map(|opt| Word {
                                opt,
                                negated: false,
                            })
                            .collect()
                    }
                    // `-j8`: an integer right after its letter.
                    _ => {
                        let (first, rest) = name.split_at(1);
                        let o = first.chars().next().and_then(short).ok_or_else(unknown)?;
                        if o.takes != Takes::Integer || !is_integer(rest) || inline.is_some() {
                            return Err(unknown());
                        }
                        return Ok((
                            vec![Word {
                                opt: o,
                                negated: false,
                            }],
                            false,
                        ));
                    }
                }
            }
        },
    };
    let last = words.last().map(|w| w.opt.takes);
    let value_follows = match (last, inline) {
        (Some(Takes::Value | Takes::Integer), Some("")) => {
            return Err(format!("'{shown}' requires a value"))
        }
        (Some(Takes::Integer), Some(v)) if !is_integer(v) => {
            return Err(format!("'{shown}': '{v}' is not a number"))
        }
        (Some(Takes::Value | Takes::Integer), Some(_)) => false,
        (Some(Takes::Value | Takes::Integer), None) => true,
        (_, Some(_)) => return Err(format!("'{shown}' takes no value")),
        (_, None) => false,
    };
    Ok((words, value_follows))
}

/// The options of `args`, each checked as nvgetopt would, against the
/// releases that know it (`host`: that release; None: any from 470), and
/// against what the hook refuses.
fn options(args: &[String], host: Option<&DriverVersion>) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let shown = crate::logging::bounded(arg, 80);
        let (found, value_follows) = read_word(arg)?;
        if value_follows {
            let value = iter
                .next()
                .ok_or_else(|| format!("'{shown}' requires a value"))?;
            if found.last().is_some_and(|w| w.opt.takes == Takes::Integer) && !is_integer(value) {
                return Err(format!(
                    "'{shown}': '{}' is not a number",
                    crate::logging::bounded(value, 40)
                ));
            }
        }
        for word in found {
            let since = match (word.negated, word.opt.takes) {
                (true, Takes::Boolean { negatable }) => negatable.max(word.opt.since),
                _ => word.opt.since,
            };
            if let Some(h) = host.filter(|h| h.numbers() < since) {
                return Err(format!(
                    "'{shown}' is not known to nvidia-installer {h} (it came with {})",
                    release(since)
                ));
            }
            if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == word.opt.name) {
                return Err(format!("'{shown}' is not allowed: {why}"));
            }
            words.push(word);
        }
    }
    Ok(words)
}

/// `installer_args` as the configuration gives them: refused when any
/// release from 470 to 590 would refuse them, or when they would stop the
/// installer from installing the driver.
pub fn check(args: &[String]) -> Result<(), String> {
    options(args, None).map(drop)
}

/// The same, against the release the host runs (an option that came later
/// than it is refused before anything is downloaded).
pub fn check_for(args: &[String], host: &DriverVersion) -> Result<(), String> {
    options(args, Some(host)).map(drop)
}

/// Whether `args` set the option `flag` is (in either of its forms).
fn sets(args: &[String], flag: &str) -> bool {
    let Some(name) = by_name(flag.trim_start_matches('-')).map(|w| w.opt.name) else {
        return false;
    };
    options(args, None).is_ok_and(|words| words.iter().any(|w| w.opt.name == name))
}

/// The driver installer's whole command line (without `--tmpdir`): what is
/// required, the defaults the configured `extra` do not set, the
/// configured ones (a flag already there is not repeated), then what the
/// install decides: compute-only's flags, or `--install-libglvnd` where
/// the container's libglvnd is absent or incomplete.
pub fn driver_args(extra: &[String], graphics: bool, install_libglvnd: bool) -> Vec<String> {
    let mut args: Vec<String> = REQUIRED.iter().map(|s| s.to_string()).collect();
    let mut ours = DEFAULTS.to_vec();
    if !graphics {
        ours.extend(COMPUTE_ONLY);
    }
    for flag in ours {
        // A boolean the configuration sets the other way is the configuration's.
        if !sets(extra, flag) || extra.iter().any(|a| a == flag) {
            args.push(flag.to_string());
        }
    }
    for arg in extra {
        let ours = REQUIRED.iter().chain(&DEFAULTS).chain(&COMPUTE_ONLY);
        if !(ours.clone().any(|f| f == arg) && args.contains(arg)) {
            args.push(arg.clone());
        }
    }
    if graphics && install_libglvnd && !sets(extra, "--install-libglvnd") {
        args.push("--install-libglvnd".to_string());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn v(s: &str) -> DriverVersion {
        s.parse().unwrap()
    }

    #[test]
    fn what_nvgetopt_accepts() {
        for ok in [
            &["--no-nvidia-modprobe"][..],
            &["--no-systemd"],
            &["--systemd"],
            &["--install-compat32-libs"],
            &["--no-install-libglvnd"],
            &["--utility-prefix", "/opt/nvidia"],
            &["--utility-prefix=/opt/nvidia"],
            &["-j", "4"],
            &["-j8"],
            &["-sq"],
            &["-sk", "6.1.0"],
            &["-silent"],
            &["--s"],
            &["--no-kernel-module"],
            &["--no-kernel-modules"],
            &["--no-dkms"],
        ] {
            assert_eq!(check(&strings(ok)), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn what_the_installer_or_the_hook_refuses() {
        for (args, expected) in [
            (
                &["--no-such-option"][..],
                "is not an nvidia-installer option",
            ),
            (&["--no-no-x-check"], "is not an nvidia-installer option"),
            (&["--no-silent"], "is not an nvidia-installer option"),
            (&["-x"], "'-x' is not an nvidia-installer option"),
            (&["--extract-only"], "is not an nvidia-installer option"),
            (&["--utility-prefix"], "requires a value"),
            (&["--utility-prefix="], "requires a value"),
            (&["--silent=yes"], "takes no value"),
            (&["-ks"], "is not an nvidia-installer option"),
            (&["-j", "four"], "is not a number"),
            (&["--"], "the hook's own after it would be ignored"),
            (&["-"], "is not an nvidia-installer option"),
            (&["silent"], "is not an option"),
            (&["--uninstall"], "uninstalls the driver"),
            (&["-K"], "installs kernel modules only"),
            (&["--tmpdir", "/tmp"], "a folder of its own"),
            (&["--log-file-name=/x"], "/var/log/nvidia-installer.log"),
            (&["--help"], "installs nothing"),
        ] {
            let err = check(&strings(args)).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    /// Options that came with a later release than the host's are refused
    /// for it: the installer would stop at "Invalid commandline".
    #[test]
    fn against_the_hosts_release() {
        let args = strings(&["--no-kernel-modules"]);
        assert!(check_for(&args, &v("535.183.01")).is_ok());
        let err = check_for(&args, &v("470.256.02")).unwrap_err();
        assert!(err.contains("came with 515.43.04"), "{err}");
        let dkms = strings(&["--no-dkms"]);
        assert!(check_for(&dkms, &v("515.76")).is_err());
        assert!(check_for(&strings(&["--dkms"]), &v("515.76")).is_ok());
        assert!(check_for(&strings(&["--skip-module-load"]), &v("550.54.14")).is_ok());
        assert!(check_for(&strings(&["--skip-module-load"]), &v("545.29.06")).is_err());
    }

    /// What the hook passes is known to every release from 470.
    #[test]
    fn the_hooks_own_flags_are_known_to_470() {
        let all = driver_args(&[], false, false);
        assert!(check_for(&all, &v("470.42.01")).is_ok(), "{all:?}");
        let graphics = driver_args(&[], true, true);
        assert!(
            check_for(&graphics, &v("470.42.01")).is_ok(),
            "{graphics:?}"
        );
    }

    /// `installer_args` adds to the required flags and the defaults.
    #[test]
    fn configured_args_add_to_the_required_ones() {
        assert_eq!(
            driver_args(&strings(&["--no-nvidia-modprobe"]), false, false),
            [
                "--silent",
                "--no-kernel-module",
                "--no-x-check",
                "--no-nouveau-check",
                "--no-systemd",
                "--no-opengl-files",
                "--no-install-compat32-libs",
                "--no-nvidia-modprobe"
            ]
        );
        // The seed's whole list, as older configurations have it: no twice.
        let seed = strings(&[
            "--silent",
            "--no-kernel-module",
            "--no-x-check",
            "--no-nouveau-check",
        ]);
        assert_eq!(
            driver_args(&seed, false, false),
            driver_args(&[], false, false)
        );
        // A default the configuration turns around is the configuration's.
        let systemd = driver_args(&strings(&["--systemd"]), true, false);
        assert!(
            !systemd.contains(&"--no-systemd".to_string()),
            "{systemd:?}"
        );
        assert_eq!(systemd.last().map(String::as_str), Some("--systemd"));
        let compat = driver_args(&strings(&["--install-compat32-libs"]), false, false);
        assert!(!compat.contains(&"--no-install-compat32-libs".to_string()));
        // Graphics: libglvnd forced only when the container's is not whole,
        // and never over the configuration's choice.
        assert!(driver_args(&[], true, true).contains(&"--install-libglvnd".to_string()));
        assert!(!driver_args(&[], true, false).contains(&"--install-libglvnd".to_string()));
        let theirs = driver_args(&strings(&["--no-install-libglvnd"]), true, true);
        assert!(
            !theirs.contains(&"--install-libglvnd".to_string()),
            "{theirs:?}"
        );
        assert!(!driver_args(&[], true, true).contains(&"--no-opengl-files".to_string()));
    }
}
