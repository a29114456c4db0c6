#!/bin/bash
# A sandbox that plays a Proxmox host for pve-nvidia-hook, with real LXC
# containers (Proxmox names them by vmid, as here) and stand-ins for what
# cannot exist without a GPU: the kernel module's version file, its device
# nodes (files bound into the container with a real lxc.mount.entry) and the
# NVIDIA runfile (a makeself archive that behaves like the real one).
#
#   sandbox.sh base                         cached Debian 12 root; prints its path
#   sandbox.sh runfile VERSION DIR [fail|slow]  builds DIR/NVIDIA-Linux-x86_64-VERSION.run
#   sandbox.sh cuda-runfile DIR             builds DIR/cuda_12.4.1_550.54.15_linux.run
#   sandbox.sh nvidia-deb DIR               builds DIR/nvidia-driver-libs_1.0_all.deb
#   sandbox.sh host-version WORK VERSION    the host "loads" driver VERSION
#   sandbox.sh up VMID WORK [gpu|nogpu] [TAGS]   creates and starts container VMID
#   sandbox.sh down VMID                    stops and destroys it
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${PNH_E2E_CACHE:-$top/target/e2e}
lxcpath=$(lxc-config lxc.lxcpath 2>/dev/null || echo /var/lib/lxc)
mirror=${PNH_E2E_MIRROR:-http://deb.debian.org/debian}

base() {
    mkdir -p "$cache"
    exec 9>"$cache/.base.lock"
    flock 9
    if [ ! -x "$cache/rootfs/bin/sh" ]; then
        rm -rf "$cache/rootfs.tmp"
        echo "sandbox: debootstrap --variant=minbase bookworm (once, cached in $cache)" >&2
        debootstrap --variant=minbase bookworm "$cache/rootfs.tmp" "$mirror" >&2
        rm -rf "$cache/rootfs"
        mv "$cache/rootfs.tmp" "$cache/rootfs"
    fi
    if [ ! -e "$cache/rootfs/.apt-updated" ]; then
        # The package lists, fetched once: each container's apt-get update
        # is then a quick revalidation.
        cp /etc/resolv.conf "$cache/rootfs/etc/resolv.conf"
        chroot "$cache/rootfs" apt-get update -qq >&2
        touch "$cache/rootfs/.apt-updated"
    fi
    echo "$cache/rootfs"
}

# NVIDIA's makeself header hands flags it does not know to nvidia-installer
# (`sh NVIDIA-...run --silent ...`); Debian's rejects them. The stand-ins use
# Debian's header with that one difference.
header() {
    local out=$1
    awk '
        /^    -\*\)$/ { print; print "\tbreak ;;"; skip = 1; next }
        skip && /^\t;;$/ { skip = 0; next }
        !skip { print }
    ' /usr/share/makeself/makeself-header.sh > "$out"
    grep -q 'Unrecognized flag' "$out" && { echo "sandbox: could not patch the makeself header" >&2; exit 1; }
    return 0
}

runfile() {
    local version=$1 dir=$2 mode=${3:-ok} stage
    stage=$(mktemp -d)
    header "$stage.header"
    sed "s/@VERSION@/$version/" "$here/stand-in/nvidia-installer" > "$stage/nvidia-installer"
    case "$mode" in
        fail) sed -i 's/^@FAIL@$/fail "Unable to load the kernel module nvidia.ko (stand-in failure)"/' "$stage/nvidia-installer" ;;
        slow) sed -i 's/^@FAIL@$/sleep 5/' "$stage/nvidia-installer" ;;
        *) sed -i '/^@FAIL@$/d' "$stage/nvidia-installer" ;;
    esac
    sed "s/@VERSION@/$version/" "$here/stand-in/nvidia-smi" > "$stage/nvidia-smi"
    cp "$here/stand-in/nvidia-uninstall" "$stage/"
    chmod 755 "$stage"/*
    mkdir -p "$dir"
    makeself --header "$stage.header" --nox11 --quiet --nocomp "$stage" "$dir/NVIDIA-Linux-x86_64-$version.run" \
        "NVIDIA Accelerated Graphics Driver for Linux-x86_64 $version (stand-in)" ./nvidia-installer >&2
    rm -rf "$stage" "$stage.header"
}

cuda_runfile() {
    local dir=$1 stage
    stage=$(mktemp -d)
    header "$stage.header"
    cp "$here/stand-in/cuda-installer" "$stage/cuda-installer"
    chmod 755 "$stage/cuda-installer"
    mkdir -p "$dir"
    makeself --header "$stage.header" --nox11 --quiet --nocomp "$stage" "$dir/cuda_12.4.1_550.54.15_linux.run" "CUDA 12.4.1 (stand-in)" ./cuda-installer >&2
    rm -rf "$stage" "$stage.header"
}

nvidia_deb() {
    local dir=$1 pkg
    pkg=$(mktemp -d)
    mkdir -p "$pkg/DEBIAN" "$pkg/usr/lib/nvidia"
    printf 'Package: nvidia-driver-libs\nVersion: 1.0\nArchitecture: all\nMaintainer: sandbox <root@localhost>\nDescription: stand-in for the distribution NVIDIA driver libraries\n' > "$pkg/DEBIAN/control"
    : > "$pkg/usr/lib/nvidia/alternate-install-present"
    mkdir -p "$dir"
    dpkg-deb --root-owner-group -b "$pkg" "$dir/nvidia-driver-libs_1.0_all.deb" >&2
    rm -rf "$pkg"
}

host_version() {
    local work=$1 version=$2
    mkdir -p "$work/sys/module/nvidia" "$work/dev"
    [ -e "$work/sys/fs" ] || ln -s /sys/fs "$work/sys/fs"
    echo "$version" > "$work/sys/module/nvidia/version"
    # The device node stand-ins: what nvidia-smi reads as the kernel module.
    echo "$version" > "$work/dev/nvidia0"
    echo "$version" > "$work/dev/nvidiactl"
}

up() {
    local vmid=$1 work=$2 gpu=${3:-gpu} tags=${4-nvidia} root dir
    root=$(base)
    down "$vmid" 2>/dev/null || true
    dir="$lxcpath/$vmid"
    mkdir -p "$dir" "$work/pve/lxc"
    cp -a "$root" "$dir/rootfs"
    {
        echo "arch: amd64"
        echo "hostname: ct$vmid"
        echo "ostype: debian"
        echo "rootfs: dir:$dir/rootfs"
        [ -n "$tags" ] && echo "tags: $tags"
        if [ "$gpu" = gpu ]; then
            echo "lxc.mount.entry: $work/dev/nvidia0 dev/nvidia0 none bind,optional,create=file"
            echo "lxc.mount.entry: $work/dev/nvidiactl dev/nvidiactl none bind,optional,create=file"
        fi
    } > "$work/pve/lxc/$vmid.conf"
    {
        echo "lxc.uts.name = ct$vmid"
        echo "lxc.rootfs.path = dir:$dir/rootfs"
        echo "lxc.net.0.type = none"
        echo "lxc.include = /usr/share/lxc/config/common.conf"
        echo "lxc.apparmor.profile = unconfined"
        echo "lxc.init.cmd = /bin/sleep infinity"
        if [ "$gpu" = gpu ]; then
            echo "lxc.mount.entry = $work/dev/nvidia0 dev/nvidia0 none bind,optional,create=file"
            echo "lxc.mount.entry = $work/dev/nvidiactl dev/nvidiactl none bind,optional,create=file"
        fi
    } > "$dir/config"
    lxc-start -n "$vmid" -d
    lxc-wait -n "$vmid" -s RUNNING -t 30
}

down() {
    local vmid=$1
    lxc-stop -n "$vmid" -k 2>/dev/null || true
    lxc-destroy -n "$vmid" 2>/dev/null || rm -rf "${lxcpath:?}/$vmid"
}

cmd=${1:-}
shift || true
case "$cmd" in
    base) base ;;
    runfile) runfile "$@" ;;
    cuda-runfile) cuda_runfile "$@" ;;
    nvidia-deb) nvidia_deb "$@" ;;
    host-version) host_version "$@" ;;
    up) up "$@" ;;
    down) down "$@" ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
