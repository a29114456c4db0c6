#!/bin/bash
# make demo: the real hook against a real sandbox container. Builds nothing
# itself (make builds the release binary first); brings up one LXC
# container that requests NVIDIA by tag, runs `<vmid> post-start` as Proxmox
# would, shows the status table and the log lines; then upgrades the host's
# driver to one whose install fails, and shows the notification the admin
# gets (a stand-in PVE::Notify records the call); the timer's sync leaves the
# container alone after the failure, and once the runfile installs, a sync
# repairs it without a restart; and tears it down (KEEP=1 keeps it).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
sandbox=$top/tests/e2e/sandbox.sh
bin=$top/target/release/pve-nvidia-hook
vmid=${VMID:-9100}
version=${DRIVER_VERSION:-550.54.14}
upgrade=${UPGRADE_VERSION:-550.90.07}

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

# Waits until the background install is over; its state.
settle() {
    local state
    for _ in $(seq 1 600); do
        state=$("$bin" status --json "$vmid" | sed -n 's/.*"state": "\(.*\)".*/\1/p')
        [ "$state" = installing ] || [ "$state" = missing ] || [ "$state" = mismatch ] || break
        sleep 0.2
    done
    echo "$state"
}

# Waits until the background log has said $1.
said() {
    for _ in $(seq 1 600); do
        grep -q -- "$1" "$work/log/$vmid.log" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "the background install never said: $1" >&2
    return 1
}

step "sandbox: Debian 12 container $vmid (tag nvidia), host driver $version (stand-ins, no GPU here)"
"$sandbox" host-version "$work" "$version"
"$sandbox" runfile "$version" "$work/runfiles"
"$sandbox" up "$vmid" "$work" gpu nvidia
cat > "$work/config.json" <<JSON
{
  "runfile_url": "$work/runfiles/NVIDIA-Linux-x86_64-{version}.run",
  "dependencies": ["kmod"],
  "paths": {"pve": "$work/pve", "sys": "$work/sys", "cache": "$work/cache",
            "lock": "$work/lock", "log": "$work/log", "state": "$work/state"}
}
JSON
export PVE_NVIDIA_HOOK_CONFIG=$work/config.json
# Proxmox's PVE::Notify, as a stand-in that records each call in
# $work/notifications.jsonl: first on the @INC of the perl the tool finds.
mkdir -p "$work/bin" "$work/perl/PVE"
cp "$top/tests/fakes/perl/PVE/Notify.pm" "$work/perl/PVE/"
printf '#!/bin/sh\nexec %s -I %s "$@"\n' "$(command -v perl)" "$work/perl" > "$work/bin/perl"
chmod 755 "$work/bin/perl"
export PATH=$work/bin:$PATH
echo "container config ($work/pve/lxc/$vmid.conf):"
sed 's/^/    /' "$work/pve/lxc/$vmid.conf"

step "pve-nvidia-hook status"
"$bin" status

step "Proxmox starts the container: pve-nvidia-hook $vmid post-start"
start=$(date +%s%N)
"$bin" "$vmid" post-start
echo "(the hook returned after $(( ($(date +%s%N) - start) / 1000000 )) ms; the install runs in the background)"

step "waiting for the background install"
state=$(settle)
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

step "the host's driver is upgraded to $upgrade, whose install fails in the container (stand-in failure)"
"$sandbox" runfile "$upgrade" "$work/runfiles" fail
"$sandbox" host-version "$work" "$upgrade"
"$bin" "$vmid" post-start
said "the admin was notified"
echo "state: $(settle)"
echo "background log, its end:"
tail -n 6 "$work/log/$vmid.log" | sed 's/^/    /'

step "what Proxmox's notifications got: PVE::Notify::notify, as the stand-in recorded it"
python3 -m json.tool "$work/notifications.jsonl"

step "rendered from the package's templates (/usr/share/pve-manager/templates/default/pve-nvidia-hook-*.txt.hbs)"
python3 - "$top/templates" "$work/notifications.jsonl" <<'PY'
import json, re, sys
data = json.loads(open(sys.argv[2]).readline())["data"]
def render(name):
    text = open(f"{sys.argv[1]}/pve-nvidia-hook-{name}.txt.hbs").read()
    return re.sub(r"\{\{\s*([\w-]+)\s*\}\}", lambda m: str(data.get(m.group(1), "")), text)
print("Subject:", render("subject").strip())
print()
print(render("body"))
PY

step "the next start, within the hour: the install fails again, the admin is not told twice"
"$bin" "$vmid" post-start
said "not notified again"
grep "not notified again" "$work/log/$vmid.log" | sed 's/^/    /'
echo "calls recorded: $(wc -l < "$work/notifications.jsonl")"
[ "$(wc -l < "$work/notifications.jsonl")" = 1 ]

step "the timer's sync, within the hour: it leaves the container alone after the failure"
"$bin" sync --backoff 2>&1 | tee "$work/sync-backoff"
grep -q "the timer tries again after" "$work/sync-backoff"

step "the mirror is fixed (a runfile that installs): pve-nvidia-hook sync repairs it, no restart"
"$sandbox" runfile "$upgrade" "$work/runfiles" ok
"$bin" sync
said "result: NVIDIA driver $upgrade installed"
state=$(settle)
echo "state: $state; background log, its end:"
tail -n 3 "$work/log/$vmid.log" | sed 's/^/    /'
[ "$state" = up-to-date ]
