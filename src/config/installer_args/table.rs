//! nvidia-installer's options as `option_table.h` declares them, read for
//! every release from 470.42.01 to 590.48.01 (NVIDIA/nvidia-installer's
//! tags; x86_64, so its `NV_X86_64` part included), and those the hook
//! refuses.

/// What an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takes {
    /// Nothing (`--no-x-check`).
    Nothing,
    /// `NVGETOPT_IS_BOOLEAN`: also `--no-<name>`, from `negatable` on.
    Boolean { negatable: [u32; 3] },
    /// `NVGETOPT_STRING_ARGUMENT`.
    Value,
    /// `NVGETOPT_INTEGER_ARGUMENT`.
    Integer,
}

pub(super) struct Opt {
    pub(super) name: &'static str,
    pub(super) short: Option<char>,
    pub(super) takes: Takes,
    pub(super) since: [u32; 3],
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
pub(super) const OPTIONS: [Opt; 108] = [
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
pub(super) const REFUSED: [(&str, &str); 14] = [
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
