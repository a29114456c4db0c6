#!/bin/bash
# The checks that need a real NVIDIA GPU and driver, for a machine that has
# them (the CI machines have none): a few minutes, root, util-linux's
# unshare and nsenter, no network, no LXC. Prints what it saw; exits 1 at
# the first check that fails.
#
#   tests/gpu/smoke.sh [BINARY]     (default: target/release/pve-nvidia-hook)
#
# 1. The host's version as the hook reads it: the real /sys/module/nvidia/
#    version, the real /proc/driver/nvidia/version (with /sys hidden), and
#    the real host nvidia-smi (with both hidden), against what nvidia-smi says.
# 2. doctor on the real device nodes: their majors, the dynamic nvidia-uvm
#    major (loaded first when it is not), against /proc/devices.
# 3. verify against a minimal container root that bind-mounts the host's
#    real user-space driver file by file, as the NVIDIA Container Toolkit
#    does: a process that is pid 1 of its own pid namespace, in its own
#    mount namespace, in the cgroup lxc/<vmid>/ns (Proxmox's layout), with
#    an lxc-attach stand-in that enters it with nsenter. The hook must see a
#    host-provided driver and leave it alone; verify must see the GPU.
#
# SMOKE_STANDIN=1 runs the same script on a machine without a GPU against
# stand-ins (a version file, an nvidia-smi that prints it, stub libraries):
# it checks the script, not the driver.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$top/target/release/pve-nvidia-hook}")
[ "$(id -u)" -eq 0 ] || { echo "smoke: needs root" >&2; exit 1; }
[ -x "$bin" ] || { echo "smoke: build first (cargo build --release), or name the binary" >&2; exit 1; }
vmid=9999
work=$(mktemp -d /tmp/pnh-gpu-smoke.XXXXXX)
cg=/sys/fs/cgroup
[ -f "$cg/cgroup.controllers" ] || cg=/sys/fs/cgroup/unified
init=
cleanup() {
    [ -n "$init" ] && kill -9 "$init" 2>/dev/null
    sleep 0.2
    rmdir "$cg/lxc/$vmid/ns" "$cg/lxc/$vmid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

sys=/sys proc=/proc dev=/dev
if [ "${SMOKE_STANDIN:-0}" = 1 ]; then
    standin=550.54.14
    sys=$work/standin/sys dev=$work/standin/dev
    mkdir -p "$sys/module/nvidia" "$dev" "$work/standin/bin"
    ln -s /sys/fs "$sys/fs"
    echo "$standin" > "$sys/module/nvidia/version"
    for n in nvidia0 nvidiactl nvidia-uvm; do echo "$standin" > "$dev/$n"; done
    printf '#!/bin/sh\necho %s\n' "$standin" > "$work/standin/bin/nvidia-smi"
    chmod 755 "$work/standin/bin/nvidia-smi"
    cc -shared -nostdlib -x c /dev/null -Wl,-soname,libnvidia-ml.so.1 -o "$work/standin/libnvidia-ml.so.$standin"
    cc -shared -nostdlib -x c /dev/null -Wl,-soname,libcuda.so.1 -o "$work/standin/libcuda.so.$standin"
    export PATH="$work/standin/bin:$PATH"
fi

config() { # PVE SYS PROC
    cat > "$work/config.json" <<JSON
{"paths": {"pve": "$1", "sys": "$2", "proc": "$3", "dev": "$dev",
           "lock": "$work/lock", "log": "$work/log", "cache": "$work/cache",
           "local_cache": "$work/cache", "state": "$work/state"}}
JSON
}
host_version() { # what doctor reports as the host's version (doctor exits 1
    # when any check fails: only its kernel-module line counts here)
    "$bin" --config "$work/config.json" doctor --json > "$work/doctor.json" || true
    python3 -c '
import json, sys
for c in json.load(sys.stdin):
    if c["check"] == "kernel module":
        print(c["detail"].split()[1] if c["level"] == "ok" else "FAIL " + c["detail"])' < "$work/doctor.json"
}

step "1. the host's version"
smi=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)
echo "nvidia-smi:                  $smi"
echo "$sys/module/nvidia/version:  $(cat "$sys/module/nvidia/version")"
[ -r "$proc/driver/nvidia/version" ] && echo "$proc/driver/nvidia/version: $(head -n1 "$proc/driver/nvidia/version")"
mkdir -p "$work/pve/lxc" "$work/empty-sys" "$work/empty-proc"
config "$work/pve" "$sys" "$proc"
from_sys=$(host_version)
echo "hook, from /sys:             $from_sys"
[ "$from_sys" = "$smi" ] || fail "/sys gave $from_sys, nvidia-smi $smi"
if [ -r "$proc/driver/nvidia/version" ]; then
    config "$work/pve" "$work/empty-sys" "$proc"
    from_proc=$(host_version)
    echo "hook, from /proc:            $from_proc"
    [ "$from_proc" = "$smi" ] || fail "/proc gave $from_proc, nvidia-smi $smi"
fi
config "$work/pve" "$work/empty-sys" "$work/empty-proc"
from_smi=$(host_version)
echo "hook, from nvidia-smi:       $from_smi"
[ "$from_smi" = "$smi" ] || fail "the nvidia-smi fallback gave $from_smi"

step "2. doctor on the device nodes"
if [ ! -e "$dev/nvidia-uvm" ] && command -v nvidia-modprobe >/dev/null; then
    nvidia-modprobe -u -c=0 || true
fi
ls -l "$dev"/nvidia* || true
grep -E 'nvidia' /proc/devices || true
config "$work/pve" "$sys" "$proc"
{ "$bin" --config "$work/config.json" doctor || true; } | grep '^[A-Z]* *host:' | tee "$work/doctor-host"
if [ "${SMOKE_STANDIN:-0}" != 1 ]; then
    grep -q '^OK    host: device nodes:' "$work/doctor-host" || fail "device nodes"
fi
uvm_major=$(awk '$2 == "nvidia-uvm" {print $1}' /proc/devices)
if [ -n "$uvm_major" ] && [ "${SMOKE_STANDIN:-0}" != 1 ]; then
    grep -q "nvidia-uvm ($uvm_major:" "$work/doctor-host" || fail "nvidia-uvm's major is $uvm_major in /proc/devices"
fi

step "3. verify in a minimal root that bind-mounts the host's driver"
version=$smi
root=$work/ct
lib=usr/lib/x86_64-linux-gnu
mkdir -p "$root"/{bin,usr/bin,$lib,lib64,dev,proc,tmp,var/tmp,etc}
# The programs the container runs (timeout, sleep) and what they, and
# nvidia-smi, load: copied, not the host's (only the driver is bound).
for p in timeout sleep sh; do cp "$(command -v $p)" "$root/bin/"; done
for f in $(ldd "$root/bin/timeout" "$root/bin/sh" "$(command -v nvidia-smi)" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f" 2>/dev/null || true
done
host_lib() {
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib "$work/standin"; do
        [ -e "$d/$1" ] && { echo "$d/$1"; return; }
    done
    ldconfig -p | awk -v n="$1" '$1 == n {print $NF; exit}'
}
mounts=()
for name in "libnvidia-ml.so.$version" "libcuda.so.$version"; do
    src=$(host_lib "$name")
    [ -n "$src" ] || fail "the host has no $name"
    : > "$root/$lib/$name"
    mounts+=("$src" "$root/$lib/$name")
    ln -sf "$name" "$root/$lib/${name%%.so.*}.so.1"
done
: > "$root/usr/bin/nvidia-smi"
mounts+=("$(command -v nvidia-smi)" "$root/usr/bin/nvidia-smi")
for n in "$dev"/nvidia*; do
    [ -e "$n" ] || continue
    [ -d "$n" ] && continue
    : > "$root/dev/$(basename "$n")"
    mounts+=("$n" "$root/dev/$(basename "$n")")
done
: > "$root/dev/null"
mounts+=(/dev/null "$root/dev/null")
mkdir -p "$cg/lxc/$vmid/ns"
binds=""
for ((i = 0; i < ${#mounts[@]}; i += 2)); do
    binds+="mount --bind '${mounts[i]}' '${mounts[i+1]}'; "
done
# pid 1 of a new pid namespace, in Proxmox's cgroup layout, with the root a
# mount of its own (as LXC's pivot_root makes it), then chrooted.
unshare --pid --mount --fork --propagation private -- sh -c "
    echo 0 > '$cg/lxc/$vmid/ns/cgroup.procs'
    mount --bind '$root' '$root'
    $binds
    mount -t proc proc '$root/proc'
    exec chroot '$root' /bin/sleep infinity" &
for _ in $(seq 50); do
    init=$(head -n1 "$cg/lxc/$vmid/ns/cgroup.procs" 2>/dev/null || true)
    [ -n "$init" ] && grep -q sleep "/proc/$init/comm" 2>/dev/null && break
    sleep 0.1
done
[ -n "$init" ] || fail "the minimal container did not start"
echo "init: pid $init, $(grep NSpid "/proc/$init/status")"
mkdir -p "$work/bin"
cat > "$work/bin/lxc-attach" <<SH
#!/bin/sh
# lxc-attach -n VMID --clear-env [--set-var K=V]... -- ARGV: enters the
# minimal container with nsenter, its environment as lxc-attach's would be.
vars=""
while [ \$# -gt 0 ]; do
    case "\$1" in
        -n) shift 2 ;;
        --clear-env) shift ;;
        --set-var) vars="\$vars \$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "lxc-attach stand-in: \$1?" >&2; exit 2 ;;
    esac
done
exec env -i \$vars nsenter -t $init -m -p -r -w -- "\$@"
SH
chmod 755 "$work/bin/lxc-attach"
{
    echo "arch: amd64"
    echo "hostname: smoke"
    echo "tags: nvidia"
    for n in "$dev"/nvidia*; do
        [ -c "$n" ] && echo "lxc.mount.entry: $n dev/$(basename "$n") none bind,optional,create=file"
    done
} > "$work/pve/lxc/$vmid.conf"
config "$work/pve" "$sys" "$proc"
export PATH="$work/bin:$PATH"
"$bin" --config "$work/config.json" status --json "$vmid" | tee "$work/status.json"
grep -q '"state": "host-provided"' "$work/status.json" || fail "not seen as host-provided"
"$bin" --config "$work/config.json" "$vmid" post-start 2>&1 | tee "$work/hook"
grep -q "bind-mounted from the host" "$work/hook" || fail "the hook did not leave it alone"
"$bin" --config "$work/config.json" verify "$vmid" | tee "$work/verify"
grep -q "nvidia-smi reports $version, the host's module is $version: OK" "$work/verify" || fail "verify"
"$bin" --config "$work/config.json" doctor "$vmid" || true

step "smoke: all checks passed ($version)"
