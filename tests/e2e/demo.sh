#!/bin/bash
# make demo: the real hook against a real sandbox container. Builds nothing
# itself (make builds the release binary first); brings up one LXC
# container that requests NVIDIA by tag, runs `<vmid> post-start` as Proxmox
# would, shows the status table and the log lines, and tears it down
# (KEEP=1 keeps it).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
sandbox=$top/tests/e2e/sandbox.sh
bin=$top/target/release/pve-nvidia-hook
vmid=${VMID:-9100}
version=${DRIVER_VERSION:-550.54.14}

[ "$(id -u)" -eq 0 ] || { echo "make demo needs root (it runs a real LXC container)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }

work=$(mktemp -d /tmp/pve-nvidia-hook-demo.XXXXXX)
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo; echo "KEEP=1: container $vmid and $work are kept (remove: $sandbox down $vmid; rm -rf $work)"
    else
        "$sandbox" down "$vmid" || true
        rm -rf "$work"
    fi
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "sandbox: Debian 12 container $vmid (tag nvidia), host driver $version (stand-ins, no GPU here)"
"$sandbox" host-version "$work" "$version"
"$sandbox" runfile "$version" "$work/runfiles"
"$sandbox" up "$vmid" "$work" gpu nvidia
cat > "$work/config.json" <<JSON
{
  "runfile_url": "$work/runfiles/NVIDIA-Linux-x86_64-{version}.run",
  "dependencies": ["kmod"],
  "paths": {"pve": "$work/pve", "sys": "$work/sys", "cache": "$work/cache",
            "lock": "$work/lock", "log": "$work/log"}
}
JSON
export PVE_NVIDIA_HOOK_CONFIG=$work/config.json
echo "container config ($work/pve/lxc/$vmid.conf):"
sed 's/^/    /' "$work/pve/lxc/$vmid.conf"

step "pve-nvidia-hook status"
"$bin" status

step "Proxmox starts the container: pve-nvidia-hook $vmid post-start"
start=$(date +%s%N)
"$bin" "$vmid" post-start
echo "(the hook returned after $(( ($(date +%s%N) - start) / 1000000 )) ms; the install runs in the background)"

step "waiting for the background install"
for _ in $(seq 1 600); do
    state=$("$bin" status --json "$vmid" | sed -n 's/.*"state": "\(.*\)".*/\1/p')
    [ "$state" = installing ] || [ "$state" = missing ] || break
    sleep 0.2
done
echo "state: $state"
echo "background log ($work/log/$vmid.log):"
sed 's/^/    /' "$work/log/$vmid.log"

step "pve-nvidia-hook status"
"$bin" status

step "pve-nvidia-hook verify $vmid"
"$bin" verify "$vmid"

step "next start: pve-nvidia-hook $vmid post-start"
start=$(date +%s%N)
"$bin" "$vmid" post-start
echo "(up-to-date path: $(( ($(date +%s%N) - start) / 1000000 )) ms, no program run in the container)"

step "inside the container: nvidia-smi"
lxc-attach -n "$vmid" -- nvidia-smi

step "syslog"
if [ -S /dev/log ]; then
    echo "the same lines went to syslog (facility daemon, ident pve-nvidia-hook): journalctl -t pve-nvidia-hook"
else
    echo "no /dev/log socket on this machine: the hook logged to stderr only (shown above)"
fi
[ "$state" = up-to-date ]
