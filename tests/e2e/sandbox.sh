#!/bin/bash
# A sandbox that plays a Proxmox host for pve-nvidia-hook, with real LXC
# containers (Proxmox names them by vmid, as here) and stand-ins for what
# cannot exist without a GPU: the kernel module's version file, its device
# nodes (files bound into the container with a real lxc.mount.entry) and the
# NVIDIA runfile (a makeself archive that behaves like the real one).
#
#   sandbox.sh base [RELEASE]               cached Debian root (bookworm, Debian 12, unless
#                                           RELEASE is trixie, Debian 13: Proxmox VE 9's);
#                                           prints its path
#   sandbox.sh runfile VERSION DIR [ok|fail|slow|real|no-compat32]
#                                           builds DIR/NVIDIA-Linux-x86_64-VERSION.run
#                                           (real: NVIDIA's own nvidia-smi, libnvidia-ml and
#                                           libcuda from Debian's packages, 535.261.03 only;
#                                           no-compat32: ...-VERSION-no-compat32.run, NVIDIA's
#                                           variant without the 32-bit libraries)
#   sandbox.sh debs                         Debian's NVIDIA packages, cached; prints their folder
#   sandbox.sh fuse-blackhole               the hostile FUSE daemon, built once; prints its path
#   sandbox.sh uffd-trap                    the tenant's userfaultfd trap, built once; prints its path
#   sandbox.sh peak-rss                     the peak-memory meter (its processes left behind
#                                           included), built once; prints its path
#   sandbox.sh cuda-runfile DIR             builds DIR/cuda_12.4.1_550.54.15_linux.run
#   sandbox.sh host-version WORK VERSION    the host "loads" driver VERSION
#   sandbox.sh stub-lib FILE SONAME [-m32]  a real ELF library with that soname
#   sandbox.sh up VMID WORK [gpu|nogpu] [TAGS] [OPTION...]
#                                           creates and starts container VMID; options:
#                                           fuse (/dev/fuse passed, as features: fuse=1),
#                                           nouvm (no /dev/nvidia-uvm), gpu1 (/dev/nvidia1
#                                           instead of nvidia0), hostdriver (the host's
#                                           nvidia-smi and libraries bind-mounted, as the
#                                           NVIDIA Container Toolkit does), unprivileged
#                                           (Proxmox's default: ids mapped from 100000),
#                                           dev[=MODE] (the nodes passed as Proxmox's devN
#                                           entries: mknod'ed 0660 or MODE, owned by the
#                                           container's root, bound in), volume (the root
#                                           on an ext4 volume of its own, mounted at
#                                           <lxcpath>/VMID/rootfs as Proxmox's pre-start
#                                           hook mounts a volume; `sandbox.sh umount VMID`
#                                           unmounts it as its post-stop hook does),
#                                           release=trixie (a Debian 13 root instead of
#                                           Debian 12's), realnodes (the
#                                           test's own nodes in WORK/devnodes bound instead
#                                           of the stand-in files), idmap (unprivileged by
#                                           lxc.idmap lines alone, no `unprivileged: 1`),
#                                           raw=FILE (its `lxc.key = value` lines added to
#                                           both configs, in Proxmox's as `lxc.key: value`)
#   sandbox.sh restart VMID WORK            stops it and starts it as Proxmox does after a
#                                           config change: its pending changes applied (WORK/bin/pct
#                                           start), the nodes of the devN entries of
#                                           WORK/pve/lxc/VMID.conf made and bound in (see `up`'s
#                                           dev), those of earlier starts gone
#   sandbox.sh down VMID                    stops and destroys it
#   sandbox.sh reboot-inside VMID           stops and starts it again as a reboot from
#                                           inside does: no Proxmox hook phase runs
#   sandbox.sh umount VMID                  unmounts a stopped container's volume (fails
#                                           while anything still holds it)
#   sandbox.sh subids [PREFIX]              gives root the subordinate ids Proxmox gives it
#                                           (root:100000:65536 in PREFIX/etc/subuid and subgid)
#                                           where root has none; `up ... unprivileged` does
#   sandbox.sh proxmox-stand-ins DIR        builds DIR/*.deb: empty packages named as
#                                           Proxmox's (pve-container, pve-manager, ...), clearly
#                                           marked as stand-ins, for the package tests
#   sandbox.sh cluster WORK NODE...         a simulated cluster: WORK/cluster is the shared
#                                           /etc/pve, WORK/node-NODE each node (its view of
#                                           /etc/pve, its own /var/lib/vz under root/, its bin)
#   sandbox.sh migrate VMID WORK FROM TO    moves a container from node FROM to node TO as a
#                                           restart migration does (stop, config moved, start)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${PNH_E2E_CACHE:-$top/target/e2e}
lxcpath=$(lxc-config lxc.lxcpath 2>/dev/null || echo /var/lib/lxc)
mirror=${PNH_E2E_MIRROR:-http://deb.debian.org/debian}

base() {
    local release=${1:-bookworm} root lock
    case "$release" in
        # Debian 12's root keeps its first names, so that existing caches serve.
        bookworm) root=$cache/rootfs lock=$cache/.base.lock ;;
        trixie) root=$cache/rootfs-$release lock=$cache/.base-$release.lock ;;
        *) echo "sandbox: no root for release '$release' (bookworm or trixie)" >&2; exit 2 ;;
    esac
    mkdir -p "$cache"
    exec 9>"$lock"
    flock 9
    if [ ! -x "$root/bin/sh" ]; then
        rm -rf "$root.tmp"
        echo "sandbox: debootstrap --variant=minbase $release (once, cached in $cache)" >&2
        debootstrap --variant=minbase "$release" "$root.tmp" "$mirror" >&2
        rm -rf "$root"
        mv "$root.tmp" "$root"
    fi
    if [ ! -e "$root/.apt-updated" ]; then
        # The package lists, fetched once: each container's apt-get update
        # is then a quick revalidation.
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        chroot "$root" apt-get update -qq >&2
        touch "$root/.apt-updated"
    fi
    echo "$root"
}

# Debian's makeself header is used for the CUDA stand-in (CUDA's runfiles
# use makeself 2.x too); NVIDIA's driver runfiles have a header of their own
# that hands flags it does not know to nvidia-installer, where Debian's
# rejects them. The CUDA stand-in takes that one difference.
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

# nvidia-installer's CRC (crc.c): CRC-32/MPEG-2, 0 for an empty file.
crc() {
    "$here/../fakes/nvidia-crc" "$1"
}

# A real ELF shared object with the given soname (it exports nothing);
# 64-bit, or 32-bit with -m32.
stub_lib() {
    cc "${3:--m64}" -shared -nostdlib -x c /dev/null "-Wl,-soname,$2" -o "$1"
}

debs() {
    "$here/debs.sh" "$cache/debs"
}

# A driver runfile the way NVIDIA builds one: a shell header that states
# its payload size and passes arguments on, an uncompressed tar payload with
# nvidia-installer, a manifest of typed files (GL ones, 32-bit ones, firmware,
# systemd units and the Vulkan loader files among them), and the files: real
# ELF libraries with NVIDIA's sonames (libnvidia-container's nvc_info.c lists
# them by what they serve). MODE real: nvidia-smi, libnvidia-ml and libcuda
# are NVIDIA's own, from Debian's packages; no-compat32: NVIDIA's variant
# without the 32-bit libraries, NVIDIA-Linux-x86_64-VERSION-no-compat32.run.
runfile() {
    local version=$1 dir=$2 mode=${3:-ok} stage payload lib=/usr/lib/x86_64-linux-gnu debdir x name
    name="NVIDIA-Linux-x86_64-$version"
    [ "$mode" = no-compat32 ] && name="$name-no-compat32"
    stage=$(mktemp -d)
    payload="$stage/$name"
    mkdir -p "$payload"
    for tool in nvidia-installer nvidia-uninstall; do
        sed -e "s/@VERSION@/$version/" -e "/^@BACKUP_LOG@\$/{r $here/stand-in/backup-log.sh" -e 'd}' \
            "$here/stand-in/$tool" > "$payload/$tool"
    done
    case "$mode" in
        fail) sed -i 's/^@FAIL@$/fail "Unable to load the kernel module nvidia.ko (stand-in failure)"/' "$payload/nvidia-installer" ;;
        slow) sed -i 's/^@FAIL@$/sleep 5/' "$payload/nvidia-installer" ;;
        *) sed -i '/^@FAIL@$/d' "$payload/nvidia-installer" ;;
    esac
    if [ "$mode" = real ]; then
        [ "$version" = 535.261.03 ] || { echo "sandbox: real binaries exist for 535.261.03 only" >&2; exit 1; }
        debdir=$(debs)
        x="$stage/x"
        for p in nvidia-smi libnvidia-ml1 libcuda1; do
            dpkg-deb -x "$debdir/${p}_535.261.03-1_amd64.deb" "$x"
        done
        cp "$x/usr/lib/nvidia/current/nvidia-smi" "$payload/nvidia-smi"
        cp "$x$lib/nvidia/current/libnvidia-ml.so.$version" "$x$lib/nvidia/current/libcuda.so.$version" "$payload/"
    else
        sed "s/@VERSION@/$version/" "$here/stand-in/nvidia-smi" > "$payload/nvidia-smi"
        stub_lib "$payload/libnvidia-ml.so.$version" libnvidia-ml.so.1
        stub_lib "$payload/libcuda.so.$version" libcuda.so.1
    fi
    local l so
    # file soname: compute, video, utility, then graphics (nvc_info.c).
    for l in "libnvidia-ptxjitcompiler.so.$version libnvidia-ptxjitcompiler.so.1" \
        "libnvidia-opencl.so.$version libnvidia-opencl.so.1" \
        "libnvidia-allocator.so.$version libnvidia-allocator.so.1" \
        "libnvidia-cfg.so.$version libnvidia-cfg.so.1" \
        "libnvidia-encode.so.$version libnvidia-encode.so.1" \
        "libnvcuvid.so.$version libnvcuvid.so.1" \
        "libnvidia-glcore.so.$version libnvidia-glcore.so.$version" \
        "libnvidia-tls.so.$version libnvidia-tls.so.$version" \
        "libnvidia-eglcore.so.$version libnvidia-eglcore.so.$version" \
        "libGLX_nvidia.so.$version libGLX_nvidia.so.0" \
        "libEGL_nvidia.so.$version libEGL_nvidia.so.0" \
        "libnvidia-vksc-core.so.$version libnvidia-vksc-core.so.1" \
        "libGLX.so.0 libGLX.so.0" \
        "libGLdispatch.so.0 libGLdispatch.so.0" \
        "libEGL.so.1 libEGL.so.1" \
        "libGL.so.1 libGL.so.1"; do
        so=${l#* }
        stub_lib "$payload/${l%% *}" "$so"
    done
    if [ "$mode" != no-compat32 ]; then
        touch "$payload/compat32-packaged"
        stub_lib "$payload/libcuda.so.$version.32" libcuda.so.1 -m32
        stub_lib "$payload/libnvidia-ml.so.$version.32" libnvidia-ml.so.1 -m32
        stub_lib "$payload/libGLX_nvidia.so.$version.32" libGLX_nvidia.so.0 -m32
    fi
    printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.277"}}\n' > "$payload/nvidia_icd.json"
    printf '{"file_format_version": "1.0.0", "layer": {"name": "VK_LAYER_NV_optimus", "type": "INSTANCE", "library_path": "libGLX_nvidia.so.0", "api_version": "1.3.277", "implementation_version": "1"}}\n' > "$payload/nvidia_layers.json"
    printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "libnvidia-vksc-core.so.1", "api_version": "1.0.14"}}\n' > "$payload/nvidia_icd_vksc.json"
    printf 'libnvidia-opencl.so.1\n' > "$payload/nvidia.icd"
    head -c 4096 /dev/urandom > "$payload/gsp_ga10x.bin"
    head -c 4096 /dev/urandom > "$payload/gsp_tu10x.bin"
    for unit in nvidia-suspend nvidia-hibernate nvidia-resume; do
        printf '[Unit]\nDescription=NVIDIA system %s actions\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/nvidia-sleep.sh "%s"\n' "$unit" "${unit#nvidia-}" > "$payload/$unit.service"
    done
    printf '#!/bin/sh\n/usr/bin/nvidia-sleep.sh "$1"\n' > "$payload/nvidia-sleep"
    chmod 755 "$payload"/*
    (
        cd "$payload"
        # TYPE ARCH FILE DESTINATION CRC-or-TARGET
        f() { echo "$1 - $2 $3 $(crc "$2")"; }
        f32() { echo "$1 COMPAT32 $2 $3 $(crc "$2")"; }
        l() { echo "$1 - - $2 $3"; }
        l32() { echo "$1 COMPAT32 - $2 $3"; }
        f UTILITY_BINARY nvidia-smi /usr/bin/nvidia-smi
        f UTILITY_BINARY nvidia-uninstall /usr/bin/nvidia-uninstall
        f UTILITY_LIB "libnvidia-ml.so.$version" "$lib/libnvidia-ml.so.$version"
        l UTILITY_LIB_SYMLINK "$lib/libnvidia-ml.so.1" "libnvidia-ml.so.$version"
        f UTILITY_LIB "libnvidia-cfg.so.$version" "$lib/libnvidia-cfg.so.$version"
        l UTILITY_LIB_SYMLINK "$lib/libnvidia-cfg.so.1" "libnvidia-cfg.so.$version"
        f CUDA_LIB "libcuda.so.$version" "$lib/libcuda.so.$version"
        l CUDA_SYMLINK "$lib/libcuda.so.1" "libcuda.so.$version"
        f CUDA_LIB "libnvidia-ptxjitcompiler.so.$version" "$lib/libnvidia-ptxjitcompiler.so.$version"
        l CUDA_SYMLINK "$lib/libnvidia-ptxjitcompiler.so.1" "libnvidia-ptxjitcompiler.so.$version"
        f CUDA_LIB "libnvidia-allocator.so.$version" "$lib/libnvidia-allocator.so.$version"
        l CUDA_SYMLINK "$lib/libnvidia-allocator.so.1" "libnvidia-allocator.so.$version"
        f OPENCL_LIB "libnvidia-opencl.so.$version" "$lib/libnvidia-opencl.so.$version"
        l OPENCL_LIB_SYMLINK "$lib/libnvidia-opencl.so.1" "libnvidia-opencl.so.$version"
        f CUDA_ICD nvidia.icd /etc/OpenCL/vendors/nvidia.icd
        f ENCODEAPI_LIB "libnvidia-encode.so.$version" "$lib/libnvidia-encode.so.$version"
        l ENCODEAPI_LIB_SYMLINK "$lib/libnvidia-encode.so.1" "libnvidia-encode.so.$version"
        f NVCUVID_LIB "libnvcuvid.so.$version" "$lib/libnvcuvid.so.$version"
        l NVCUVID_LIB_SYMLINK "$lib/libnvcuvid.so.1" "libnvcuvid.so.$version"
        f OPENGL_LIB "libnvidia-glcore.so.$version" "$lib/libnvidia-glcore.so.$version"
        f OPENGL_LIB "libnvidia-eglcore.so.$version" "$lib/libnvidia-eglcore.so.$version"
        f TLS_LIB "libnvidia-tls.so.$version" "$lib/libnvidia-tls.so.$version"
        f GLX_CLIENT_LIB "libGLX_nvidia.so.$version" "$lib/libGLX_nvidia.so.$version"
        l GLX_CLIENT_SYMLINK "$lib/libGLX_nvidia.so.0" "libGLX_nvidia.so.$version"
        f EGL_CLIENT_LIB "libEGL_nvidia.so.$version" "$lib/libEGL_nvidia.so.$version"
        l EGL_CLIENT_SYMLINK "$lib/libEGL_nvidia.so.0" "libEGL_nvidia.so.$version"
        f OPENGL_LIB "libnvidia-vksc-core.so.$version" "$lib/libnvidia-vksc-core.so.$version"
        f GLVND_LIB libGLX.so.0 "$lib/libGLX.so.0"
        f GLVND_LIB libGLdispatch.so.0 "$lib/libGLdispatch.so.0"
        f GLVND_LIB libEGL.so.1 "$lib/libEGL.so.1"
        f GLVND_LIB libGL.so.1 "$lib/libGL.so.1"
        f VULKAN_ICD_JSON nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json
        f VULKAN_ICD_JSON nvidia_layers.json /etc/vulkan/implicit_layer.d/nvidia_layers.json
        f VULKANSC_ICD_JSON nvidia_icd_vksc.json /etc/vulkansc/icd.d/nvidia_icd_vksc.json
        f FIRMWARE gsp_ga10x.bin "/lib/firmware/nvidia/$version/gsp_ga10x.bin"
        f FIRMWARE gsp_tu10x.bin "/lib/firmware/nvidia/$version/gsp_tu10x.bin"
        f SYSTEMD_UNIT nvidia-suspend.service /usr/lib/systemd/system/nvidia-suspend.service
        f SYSTEMD_UNIT nvidia-hibernate.service /usr/lib/systemd/system/nvidia-hibernate.service
        f SYSTEMD_UNIT nvidia-resume.service /usr/lib/systemd/system/nvidia-resume.service
        f SYSTEMD_SLEEP_SCRIPT nvidia-sleep /usr/lib/systemd/system-sleep/nvidia
        if [ -e compat32-packaged ]; then
            f32 CUDA_LIB "libcuda.so.$version.32" "libcuda.so.$version"
            l32 CUDA_SYMLINK libcuda.so.1 "libcuda.so.$version"
            f32 UTILITY_LIB "libnvidia-ml.so.$version.32" "libnvidia-ml.so.$version"
            l32 UTILITY_LIB_SYMLINK libnvidia-ml.so.1 "libnvidia-ml.so.$version"
            f32 GLX_CLIENT_LIB "libGLX_nvidia.so.$version.32" "libGLX_nvidia.so.$version"
            l32 GLX_CLIENT_SYMLINK libGLX_nvidia.so.0 "libGLX_nvidia.so.$version"
        fi
    ) > "$payload/manifest"
    local lines usize
    lines=$(wc -l < "$here/stand-in/makeself-header.sh")
    usize=$(du -Lks --apparent-size "$payload" | cut -f1)
    mkdir -p "$dir"
    sed -e "s/@SKIP@/$((lines + 1))/" -e "s/@USIZE@/$usize/" \
        -e "s/@LABEL@/NVIDIA Accelerated Graphics Driver for Linux-x86_64 $version (stand-in)/" \
        -e "s/@TARGETDIR@/$name/" \
        "$here/stand-in/makeself-header.sh" > "$stage/header"
    cat "$stage/header" > "$dir/$name.run"
    tar cf - -C "$stage" "$name" >> "$dir/$name.run"
    rm -rf "$stage"
}

fuse_blackhole() {
    mkdir -p "$cache"
    if [ ! -x "$cache/fuse-blackhole" ] || [ "$here/stand-in/fuse-blackhole.c" -nt "$cache/fuse-blackhole" ]; then
        cc -static -O2 -o "$cache/fuse-blackhole.tmp" "$here/stand-in/fuse-blackhole.c" >&2
        mv "$cache/fuse-blackhole.tmp" "$cache/fuse-blackhole"
    fi
    echo "$cache/fuse-blackhole"
}

uffd_trap() {
    mkdir -p "$cache"
    if [ ! -x "$cache/uffd-trap" ] || [ "$here/stand-in/uffd-trap.c" -nt "$cache/uffd-trap" ]; then
        cc -static -O2 -pthread -o "$cache/uffd-trap.tmp" "$here/stand-in/uffd-trap.c" >&2
        mv "$cache/uffd-trap.tmp" "$cache/uffd-trap"
    fi
    echo "$cache/uffd-trap"
}

peak_rss() {
    mkdir -p "$cache"
    if [ ! -x "$cache/peak-rss" ] || [ "$here/stand-in/peak-rss.c" -nt "$cache/peak-rss" ]; then
        cc -O2 -o "$cache/peak-rss.tmp" "$here/stand-in/peak-rss.c" >&2
        mv "$cache/peak-rss.tmp" "$cache/peak-rss"
    fi
    echo "$cache/peak-rss"
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

host_version() {
    local work=$1 version=$2
    mkdir -p "$work/sys/module/nvidia" "$work/dev"
    [ -e "$work/sys/fs" ] || ln -s /sys/fs "$work/sys/fs"
    echo "$version" > "$work/sys/module/nvidia/version"
    # The device node stand-ins: what nvidia-smi reads as the kernel module.
    for n in nvidia0 nvidia1 nvidiactl nvidia-uvm; do
        echo "$version" > "$work/dev/$n"
    done
    # The host's own user-space driver, for containers that bind-mount it.
    mkdir -p "$work/hostdriver"
    sed "s/@VERSION@/$version/" "$here/stand-in/nvidia-smi" > "$work/hostdriver/nvidia-smi"
    chmod 755 "$work/hostdriver/nvidia-smi"
    stub_lib "$work/hostdriver/libnvidia-ml.so.$version" libnvidia-ml.so.1
    stub_lib "$work/hostdriver/libcuda.so.$version" libcuda.so.1
}

up() {
    local vmid=$1 work=$2 gpu=${3:-gpu} tags=${4-nvidia} root dir opt fuse=no hostdriver=no
    local nodes="nvidia0 nvidiactl nvidia-uvm" version unprivileged=no dev=no dev_mode=0660 volume=no
    local release=bookworm nodedir="$work/dev" idmap=no raw=
    shift 4 2>/dev/null || shift $#
    for opt in "$@"; do
        case "$opt" in
            fuse) fuse=yes ;;
            nouvm) nodes=${nodes/ nvidia-uvm/} ;;
            gpu1) nodes=${nodes/nvidia0/nvidia1} ;;
            hostdriver) hostdriver=yes ;;
            unprivileged) unprivileged=yes ;;
            dev) dev=yes ;;
            dev=*) dev=yes; dev_mode=${opt#dev=} ;;
            volume) volume=yes ;;
            release=*) release=${opt#release=} ;;
            realnodes) nodedir="$work/devnodes" ;;
            idmap) unprivileged=yes; idmap=yes ;;
            raw=*) raw=${opt#raw=} ;;
            *) echo "sandbox: unknown option $opt" >&2; exit 2 ;;
        esac
    done
    version=$(cat "$work/sys/module/nvidia/version")
    local lib=usr/lib/x86_64-linux-gnu
    local driver_mounts=(
        "$work/hostdriver/nvidia-smi usr/bin/nvidia-smi none bind,ro,create=file"
        "$work/hostdriver/libnvidia-ml.so.$version $lib/libnvidia-ml.so.$version none bind,ro,create=file"
        "$work/hostdriver/libcuda.so.$version $lib/libcuda.so.$version none bind,ro,create=file"
    )
    root=$(base "$release")
    down "$vmid" 2>/dev/null || true
    dir="$lxcpath/$vmid"
    mkdir -p "$dir" "$work/pve/lxc"
    cp -a "$root" "$dir/rootfs"
    local offset=0
    if [ "$unprivileged" = yes ]; then
        subids
        offset=100000
        shift_ids "$dir/rootfs" "$offset"
    fi
    local rootfs_path="dir:$dir/rootfs"
    if [ "$volume" = yes ]; then
        truncate -s 2G "$dir/rootfs.img"
        mkfs.ext4 -q -F -d "$dir/rootfs" "$dir/rootfs.img"
        rm -rf "$dir/rootfs"
        mkdir "$dir/rootfs"
        mount -o loop "$dir/rootfs.img" "$dir/rootfs"
    fi
    # Proxmox's devN: nodes made by its pre-start hook (mode 0660 unless
    # mode=, owned by the container's root through the idmap), bound in by
    # its autodev hook. The sandbox's GPU "nodes" are files.
    local passthrough="$work/passthrough/$vmid" n i
    if [ "$dev" = yes ]; then
        rm -rf "$passthrough"
        mkdir -p "$passthrough"
        for n in $nodes; do
            cp "$work/dev/$n" "$passthrough/$n"
            chmod "$dev_mode" "$passthrough/$n"
            chown "$offset:$offset" "$passthrough/$n"
        done
    fi
    {
        echo "arch: amd64"
        echo "hostname: ct$vmid"
        echo "ostype: debian"
        echo "rootfs: $rootfs_path"
        [ -n "$tags" ] && echo "tags: $tags"
        [ "$fuse" = yes ] && echo "features: fuse=1"
        if [ "$idmap" = yes ]; then
            echo "lxc.idmap: u 0 100000 65536"
            echo "lxc.idmap: g 0 100000 65536"
        elif [ "$unprivileged" = yes ]; then
            echo "unprivileged: 1"
        fi
        if [ "$gpu" = gpu ] && [ "$dev" = yes ]; then
            i=0
            for n in $nodes; do
                if [ "$dev_mode" = 0660 ]; then
                    echo "dev$i: /dev/$n"
                else
                    echo "dev$i: /dev/$n,mode=$dev_mode"
                fi
                i=$((i + 1))
            done
        elif [ "$gpu" = gpu ]; then
            for n in $nodes; do
                echo "lxc.mount.entry: $nodedir/$n dev/$n none bind,optional,create=file"
            done
        fi
        if [ "$hostdriver" = yes ]; then
            for m in "${driver_mounts[@]}"; do echo "lxc.mount.entry: $m"; done
        fi
        [ -z "$raw" ] || sed 's/ = /: /' "$raw"
    } > "$work/pve/lxc/$vmid.conf"
    {
        echo "lxc.uts.name = ct$vmid"
        echo "lxc.rootfs.path = $rootfs_path"
        echo "lxc.net.0.type = none"
        echo "lxc.include = /usr/share/lxc/config/common.conf"
        echo "lxc.apparmor.profile = unconfined"
        echo "lxc.init.cmd = /bin/sleep infinity"
        # Proxmox's cgroup layout (pve-container's update_lxc_config).
        echo "lxc.cgroup.relative = 0"
        echo "lxc.cgroup.dir.monitor = lxc.monitor/$vmid"
        echo "lxc.cgroup.dir.container = lxc/$vmid"
        echo "lxc.cgroup.dir.container.inner = ns"
        if [ "$unprivileged" = yes ]; then
            echo "lxc.include = /usr/share/lxc/config/userns.conf"
            # The container shares the host's network namespace (net type
            # none), which is not its user namespace's: no sysfs of its own.
            echo "lxc.mount.auto ="
            echo "lxc.mount.auto = proc:mixed cgroup:mixed"
            echo "lxc.idmap = u 0 100000 65536"
            echo "lxc.idmap = g 0 100000 65536"
        fi
        if [ "$fuse" = yes ]; then
            echo "lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0"
            echo "lxc.cgroup.devices.allow = c 10:229 rwm"
            echo "lxc.cgroup2.devices.allow = c 10:229 rwm"
        fi
        if [ "$gpu" = gpu ] && [ "$dev" = yes ]; then
            for n in $nodes; do
                echo "lxc.mount.entry = $passthrough/$n dev/$n none bind,create=file"
            done
        elif [ "$gpu" = gpu ]; then
            for n in $nodes; do
                echo "lxc.mount.entry = $nodedir/$n dev/$n none bind,optional,create=file"
            done
        fi
        if [ "$hostdriver" = yes ]; then
            for m in "${driver_mounts[@]}"; do echo "lxc.mount.entry = $m"; done
        fi
        [ -z "$raw" ] || cat "$raw"
    } > "$dir/config"
    lxc-start -n "$vmid" -d ${PNH_LXC_LOG:+-l DEBUG -o "$PNH_LXC_LOG"}
    lxc-wait -n "$vmid" -s RUNNING -t 30
}

# A start as Proxmox makes it after a config change: the nodes of the devN
# entries of the current config (above any [section]) made as pve-container's
# create_passthrough_device_node makes them (mode 0660 unless mode=; owned
# by the container's uid/gid 0 unless uid=/gid=, which are the container's
# ids, mapped through its idmap) and bound in, replacing the binds of earlier
# starts. The sandbox's GPU "nodes" are files (their content is the stand-in
# node's, where there is one).
restart() {
    local vmid=$1 work=$2 dir conf passthrough offset=0 line value o path mode uid gid n
    dir="$lxcpath/$vmid"
    conf="$work/pve/lxc/$vmid.conf"
    passthrough="$work/passthrough/$vmid"
    lxc-stop -n "$vmid" -k 2>/dev/null || true
    # vm_start applies the pending changes first.
    "$work/bin/pct" start "$vmid"
    if sed '/^\[/q' "$conf" | grep -qE '^(unprivileged: 1|lxc\.idmap)'; then
        offset=100000
    fi
    rm -rf "$passthrough"
    mkdir -p "$passthrough"
    grep -vF " = $passthrough/" "$dir/config" > "$dir/config.new" || true
    while IFS= read -r line; do
        case "$line" in dev[0-9]*:\ *) ;; *) continue ;; esac
        value=${line#*: }
        path= mode=0660 uid=0 gid=0
        IFS=, read -ra opts <<< "$value"
        for o in "${opts[@]}"; do
            case "$o" in
                path=*) path=${o#path=} ;;
                mode=*) mode=${o#mode=} ;;
                uid=*) uid=${o#uid=} ;;
                gid=*) gid=${o#gid=} ;;
                deny-write=*) ;;
                *) path=$o ;;
            esac
        done
        n=${path#/dev/}
        mkdir -p "$(dirname "$passthrough/$n")"
        if [ -f "$work/dev/$n" ]; then cp "$work/dev/$n" "$passthrough/$n"; else : > "$passthrough/$n"; fi
        chmod "$mode" "$passthrough/$n"
        chown "$((uid + offset)):$((gid + offset))" "$passthrough/$n"
        echo "lxc.mount.entry = $passthrough/$n dev/$n none bind,create=file" >> "$dir/config.new"
    done < <(sed '/^\[/q' "$conf")
    mv "$dir/config.new" "$dir/config"
    lxc-start -n "$vmid" -d ${PNH_LXC_LOG:+-l DEBUG -o "$PNH_LXC_LOG"}
    lxc-wait -n "$vmid" -s RUNNING -t 30
}

# Root's subordinate ids as Proxmox gives them: lxc-pve's postinst runs
# `usermod -v 100000-165535 -w 100000-165535 root`. Where newuidmap exists
# (uidmap: lxc recommends it, lxc-pve depends on it), LXC maps an
# unprivileged container's ids through newuidmap and newgidmap, which refuse
# ids that /etc/subuid and /etc/subgid do not give root: without them no
# unprivileged container starts. Added only where root has no entry (an
# admin's own ranges are left alone); the files are created empty first
# where missing, as Debian's passwd package creates them.
subids() {
    local prefix=${1:-} f flag args=() files=() usermod=(usermod)
    [ -z "$prefix" ] || usermod+=(-P "$prefix")
    for f in subuid subgid; do
        [ "$f" = subuid ] && flag=-v || flag=-w
        if ! grep -qE '^(root|0):' "$prefix/etc/$f" 2>/dev/null; then
            [ -e "$prefix/etc/$f" ] || install -m 0644 /dev/null "$prefix/etc/$f"
            args+=("$flag" 100000-165535)
            files+=("$prefix/etc/$f")
        elif ! awk -F: '($1 == "root" || $1 == "0") && $2 <= 100000 && $2 + $3 >= 165536 { ok = 1 } END { exit !ok }' "$prefix/etc/$f"; then
            echo "sandbox: root's ids in $prefix/etc/$f do not include 100000-165535 (Proxmox's): the unprivileged containers, mapped from 100000, may not start" >&2
        fi
    done
    [ ${#args[@]} -gt 0 ] || return 0
    echo "sandbox: root has no subordinate ids in ${files[*]}: giving it 100000-165535 as Proxmox does (lxc-pve's postinst: usermod ${args[*]} root)" >&2
    "${usermod[@]}" "${args[@]}" root
}

# Packages named as the Proxmox VE packages pve-nvidia-hook depends on, so
# that its package installs in a sandbox container as on a node, with its
# Depends met, never forced. They are stand-ins and say so: nothing of
# Proxmox's is in them but what the package tests need: lxc-pve's relations
# to Debian's lxc (from its debian/control), and a `pvesm` that answers
# `pvesm path local:snippets/NAME` as pve-storage does for the installer's
# `local` (a dir storage at /var/lib/vz).
proxmox_stand_ins() {
    local dir=$1 stage p
    mkdir -p "$dir"
    stage=$(mktemp -d)
    for p in pve-container pve-manager pve-cluster libpve-storage-perl lxc-pve; do
        mkdir -p "$stage/$p/DEBIAN"
        {
            echo "Package: $p"
            echo "Version: 0~stand-in"
            echo "Architecture: all"
            echo "Maintainer: pve-nvidia-hook tests <pve-nvidia-hook@example.org>"
            if [ "$p" = lxc-pve ]; then
                echo "Provides: liblxc1, lxc"
                echo "Conflicts: liblxc1, lxc"
                echo "Replaces: liblxc1, lxc"
            fi
            echo "Description: STAND-IN for Proxmox VE's $p, not Proxmox's package"
            echo " Built by pve-nvidia-hook's tests/e2e/sandbox.sh so that its package"
            echo " installs in a test container with its Depends met. Never on a node."
        } > "$stage/$p/DEBIAN/control"
    done
    mkdir -p "$stage/libpve-storage-perl/usr/sbin"
    cat > "$stage/libpve-storage-perl/usr/sbin/pvesm" <<'SH'
#!/bin/sh
# Stand-in for pve-storage's pvesm: `path` of a snippet in `local` only.
case "$1 $2" in
    "path local:snippets/"*) echo "/var/lib/vz/snippets/${2#local:snippets/}" ;;
    *) echo "pvesm stand-in: only 'path local:snippets/NAME'" >&2; exit 255 ;;
esac
SH
    chmod 755 "$stage/libpve-storage-perl/usr/sbin/pvesm"
    for p in "$stage"/*; do
        dpkg-deb --root-owner-group -Zgzip --build "$p" "$dir/$(basename "$p")_0~stand-in_all.deb" >/dev/null
    done
    rm -rf "$stage"
}

# Every file's owner moved up by OFFSET, as an unprivileged container's
# root file system is (chown clears set-id bits: the mode is put back).
shift_ids() {
    python3 - "$1" "$2" <<'PY'
import os, stat, sys
root, offset = sys.argv[1], int(sys.argv[2])
def shift(p):
    st = os.lstat(p)
    os.lchown(p, st.st_uid + offset, st.st_gid + offset)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(p, stat.S_IMODE(st.st_mode))
for d, dirs, files in os.walk(root):
    shift(d)
    for n in dirs + files:
        p = os.path.join(d, n)
        if os.path.islink(p) or not os.path.isdir(p):
            shift(p)
PY
}

# The shared /etc/pve of a cluster (WORK/cluster) and each node's own
# folder (WORK/node-NODE): its view of /etc/pve (local, lxc and
# qemu-server link to its own part, as pmxcfs's links do), its /var/lib/vz
# under root/, and its bin with the Proxmox stand-ins.
cluster() {
    local work=$1 node v
    shift
    mkdir -p "$work/cluster"
    printf 'dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n' > "$work/cluster/storage.cfg"
    printf 'keyboard: en-us\n' > "$work/cluster/datacenter.cfg"
    for node in "$@"; do
        mkdir -p "$work/cluster/nodes/$node/lxc" "$work/cluster/nodes/$node/qemu-server"
    done
    for node in "$@"; do
        v="$work/node-$node"
        mkdir -p "$v/pve" "$v/root/var/lib/vz/snippets" "$v/bin"
        ln -sfn "../../cluster/nodes/$node" "$v/pve/local"
        ln -sfn "../../cluster/nodes/$node/lxc" "$v/pve/lxc"
        ln -sfn "../../cluster/nodes/$node/qemu-server" "$v/pve/qemu-server"
        ln -sfn ../../cluster/nodes "$v/pve/nodes"
        ln -sfn ../../cluster/storage.cfg "$v/pve/storage.cfg"
        ln -sfn ../../cluster/datacenter.cfg "$v/pve/datacenter.cfg"
        mkdir -p "$work/cluster/pve-nvidia-hook"
        ln -sfn ../../cluster/pve-nvidia-hook "$v/pve/pve-nvidia-hook"
        echo "$v/root" > "$v/storage_root"
        echo "$v/devnodes" > "$v/host_dev"
        cp "$top/tests/fakes/pct" "$top/tests/fakes/pvesh" "$top/tests/fakes/pve_storage.py" "$v/bin/"
        printf '#!/bin/sh\necho "$*" >> "%s"\nexec "%s" "$@"\n' "$v/attach.log" "$(command -v lxc-attach)" > "$v/bin/lxc-attach"
        chmod 755 "$v/bin/lxc-attach"
        : > "$v/attach.log"
    done
}

migrate() {
    local vmid=$1 work=$2 from=$3 to=$4 dir
    dir="$lxcpath/$vmid"
    lxc-stop -n "$vmid" -k
    mv "$work/cluster/nodes/$from/lxc/$vmid.conf" "$work/cluster/nodes/$to/lxc/$vmid.conf"
    sed -i "s#$work/node-$from/#$work/node-$to/#g" "$work/cluster/nodes/$to/lxc/$vmid.conf" "$dir/config"
    lxc-start -n "$vmid" -d ${PNH_LXC_LOG:+-l DEBUG -o "$PNH_LXC_LOG"}
    lxc-wait -n "$vmid" -s RUNNING -t 30
}

reboot_inside() {
    local vmid=$1
    lxc-stop -n "$vmid" -k
    lxc-start -n "$vmid" -d ${PNH_LXC_LOG:+-l DEBUG -o "$PNH_LXC_LOG"}
    lxc-wait -n "$vmid" -s RUNNING -t 30
}

down() {
    local vmid=$1
    lxc-stop -n "$vmid" -k 2>/dev/null || true
    if mountpoint -q "$lxcpath/$vmid/rootfs"; then
        umount "$lxcpath/$vmid/rootfs" 2>/dev/null || umount -l "$lxcpath/$vmid/rootfs"
    fi
    lxc-destroy -n "$vmid" 2>/dev/null || rm -rf "${lxcpath:?}/$vmid"
}

cmd=${1:-}
shift || true
case "$cmd" in
    base) base "$@" ;;
    runfile) runfile "$@" ;;
    debs) debs ;;
    fuse-blackhole) fuse_blackhole ;;
    uffd-trap) uffd_trap ;;
    peak-rss) peak_rss ;;
    cluster) cluster "$@" ;;
    migrate) migrate "$@" ;;
    cuda-runfile) cuda_runfile "$@" ;;
    host-version) host_version "$@" ;;
    stub-lib) stub_lib "$@" ;;
    up) up "$@" ;;
    restart) restart "$@" ;;
    reboot-inside) reboot_inside "$@" ;;
    down) down "$@" ;;
    umount) umount "$lxcpath/$1/rootfs" ;;
    subids) subids "$@" ;;
    proxmox-stand-ins) proxmox_stand_ins "$@" ;;
    *) sed -n '2,/^set -euo pipefail$/{/^#/p}' "$0" >&2; exit 2 ;;
esac
