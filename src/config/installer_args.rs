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

use crate::version::DriverVersion;

/// What an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// Nothing (`--no-x-check`).
    Nothing,
    /// `NVGETOPT_IS_BOOLEAN`: also `--no-<name>`, from `negatable` on.
    Boolean { negatable: [u32; 3] },
    /// `NVGETOPT_STRING_ARGUMENT`.
    Value,
    /// `NVGETOPT_INTEGER_ARGUMENT`.
    Integer,
}

struct Opt {
    name: &'static str,
    short: Option<char>,
    takes: Takes,
    since: [u32; 3],
}

const R470: [u32; 3] = [470, 42, 1];

const fn opt(name: &'static str, short: Option<char>, takes: Takes) -> Opt {
    Opt {
        name,
        short,
        takes,
        since: R470,
    }
}

const fn later(name: &'static str, short: Option<char>, takes: Takes, since: [u32; 3]) -> Opt {
    Opt {
        name,
        short,
        takes,
        since,
    }
}

const N: Takes = Takes::Nothing;
const V: Takes = Takes::Value;
const B: Takes = Takes::Boolean { negatable: R470 };

/// `option_table.h`, 470.42.01 to 590.48.01 (x86_64: the compat32 options
/// are in its `NV_X86_64` part).
const OPTIONS: [Opt; 108] = [
    opt("version", Some('v'), N),
    opt("help", Some('h'), N),
    opt("advanced-options", Some('A'), N),
    opt("accept-license", Some('a'), N),
    opt("driver-info", Some('i'), N),
    opt("uninstall", None, N),
    opt("skip-module-unload", None, N),
    opt("sanity", None, N),
    opt("expert", Some('e'), N),
    opt("no-questions", Some('q'), N),
    opt("silent", Some('s'), N),
    opt("x-prefix", None, V),
    opt("xfree86-prefix", None, V),
    opt("x-module-path", None, V),
    opt("x-library-path", None, V),
    opt("x-sysconfig-path", None, V),
    opt("opengl-prefix", None, V),
    opt("opengl-libdir", None, V),
    opt("wine-prefix", None, V),
    opt("wine-libdir", None, V),
    opt("compat32-chroot", None, V),
    opt("compat32-prefix", None, V),
    opt("compat32-libdir", None, V),
    opt("install-compat32-libs", None, B),
    opt("installer-prefix", None, V),
    opt("utility-prefix", None, V),
    opt("utility-libdir", None, V),
    opt("documentation-prefix", None, V),
    opt("application-profile-path", None, V),
    opt("kernel-include-path", None, V),
    opt("kernel-source-path", None, V),
    opt("kernel-output-path", None, V),
    opt("kernel-install-path", None, V),
    opt("proc-mount-point", None, V),
    opt("log-file-name", None, V),
    opt("tmpdir", None, V),
    opt("ui", None, V),
    opt("no-ncurses-color", Some('c'), N),
    opt("no-nvidia-modprobe", None, N),
    opt("kernel-name", Some('k'), V),
    opt("no-precompiled-interface", Some('n'), N),
    opt("no-abi-note", None, N),
    opt("no-rpms", None, N),
    opt("no-backup", Some('b'), N),
    opt("no-recursion", Some('r'), N),
    opt("kernel-module-only", Some('K'), N),
    opt("no-kernel-module", None, N),
    opt("no-x-check", None, N),
    opt("precompiled-kernel-interfaces-path", None, V),
    opt("no-nouveau-check", Some('z'), N),
    // A plain flag until 545, boolean from then on.
    opt(
        "disable-nouveau",
        Some('Z'),
        Takes::Boolean {
            negatable: [545, 23, 6],
        },
    ),
    opt("run-nvidia-xconfig", Some('X'), N),
    opt("force-selinux", None, V),
    opt("selinux-chcon-type", None, V),
    opt("no-sigwinch-workaround", None, N),
    opt("no-cc-version-check", None, N),
    opt("no-distro-scripts", None, N),
    opt("no-opengl-files", None, N),
    opt("no-wine-files", None, N),
    opt("kernel-module-source-prefix", None, V),
    opt("kernel-module-source-dir", None, V),
    opt("no-kernel-module-source", None, N),
    // A plain flag until 520, boolean from then on.
    opt(
        "dkms",
        None,
        Takes::Boolean {
            negatable: [520, 56, 6],
        },
    ),
    opt("module-signing-secret-key", None, V),
    opt("module-signing-public-key", None, V),
    opt("module-signing-script", None, V),
    opt("module-signing-key-path", None, V),
    opt("module-signing-hash", None, V),
    opt("module-signing-x509-hash", None, V),
    opt("no-check-for-alternate-installs", None, N),
    opt("no-unified-memory", None, N),
    opt("no-drm", None, N),
    opt("concurrency-level", Some('j'), Takes::Integer),
    opt("force-libglx-indirect", None, N),
    opt("no-libglx-indirect", None, N),
    opt("install-libglvnd", None, B),
    opt("glvnd-egl-config-path", None, V),
    opt("egl-external-platform-config-path", None, V),
    opt("override-file-type-destination", None, V),
    opt("skip-depmod", None, N),
    opt("systemd", None, B),
    opt("systemd-unit-prefix", None, V),
    opt("systemd-sleep-prefix", None, V),
    opt("systemd-sysconf-prefix", None, V),
    opt("kernel-module-build-directory", Some('m'), V),
    opt("debug", Some('d'), N),
    opt("help-args-only", None, N),
    opt("add-this-kernel", None, N),
    opt("rpm-file-list", None, V),
    opt("advanced-options-args-only", None, N),
    opt("no-runlevel-check", None, N),
    opt("install-vdpau-wrapper", None, B),
    opt("no-network", Some('N'), N),
    opt("force-tls", None, V),
    opt("force-tls-compat32", None, V),
    opt("glvnd-glx-client", None, B),
    opt("glvnd-egl-client", None, B),
    // Also absent from 495.29.05 alone.
    later("no-peermem", None, N, [470, 86, 0]),
    later("gbm-backend-dir", None, V, [495, 29, 5]),
    later("kernel-modules-only", Some('K'), N, [515, 43, 4]),
    later("no-kernel-modules", None, N, [515, 43, 4]),
    later("xdg-data-dir", None, V, [530, 30, 2]),
    later(
        "allow-installation-with-running-driver",
        None,
        B,
        [545, 23, 6],
    ),
    later("rebuild-initramfs", None, B, [545, 23, 6]),
    later("skip-module-load", None, N, [550, 40, 7]),
    later("kernel-module-type", Some('M'), V, [555, 42, 2]),
    later("gbm-backend-dir32", None, V, [570, 86, 16]),
    later(
        "print-recommended-kernel-module-type",
        None,
        N,
        [570, 86, 16],
    ),
];

/// Options that make the installer do something other than install the
/// driver's user-space files (print, uninstall, check, build modules), or
/// that the hook sets itself: `--tmpdir` is each install's own folder, and
/// `verify` reads the installer's log where `--log-file-name` would move it.
const REFUSED: [(&str, &str); 14] = [
    ("version", "prints the version and installs nothing"),
    ("help", "prints help and installs nothing"),
    ("advanced-options", "prints help and installs nothing"),
    ("help-args-only", "prints help and installs nothing"),
    (
        "advanced-options-args-only",
        "prints help and installs nothing",
    ),
    (
        "driver-info",
        "prints the installed driver and installs nothing",
    ),
    ("uninstall", "uninstalls the driver"),
    ("sanity", "checks an installation and installs nothing"),
    (
        "add-this-kernel",
        "builds a kernel interface and installs nothing",
    ),
    ("kernel-module-only", "installs kernel modules only"),
    ("kernel-modules-only", "installs kernel modules only"),
    (
        "print-recommended-kernel-module-type",
        "prints a module type and installs nothing",
    ),
    ("tmpdir", "the hook gives each install a folder of its own"),
    (
        "log-file-name",
        "verify reads the installer's log at /var/log/nvidia-installer.log",
    ),
];

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
