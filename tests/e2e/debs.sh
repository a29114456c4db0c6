#!/bin/bash
# Fetches NVIDIA's real user-space binaries as Debian ships them (bookworm's
# non-free and contrib), with what they need beyond a minbase root, so that
# the end-to-end tests can install them in a container: no stand-ins.
#
#   debs.sh DIR     downloads the .deb files into DIR; prints DIR's absolute path
#
# Nothing on the machine changes: apt runs with a private setup under DIR/.apt
# (its own sources, lists, caches, an empty dpkg status, none of the machine's
# apt.conf.d), so neither the machine's apt configuration nor its packages are
# touched, and nothing is installed. Once DIR holds them all (DIR/.complete
# names the files, and each is there), a run asks the network for nothing.
# Two runs at once are safe (flock on DIR/.lock), and a run that fails leaves
# no half set behind: the files are fetched into DIR/.partial and moved in only
# when all are there.
#
# The mirror is the machine's own (the first URIs: in
# /etc/apt/sources.list.d/debian.sources), else http://deb.debian.org/debian;
# PNH_E2E_MIRROR overrides it.
set -euo pipefail

suite=bookworm
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# The NVIDIA packages, pinned to the version in the base bookworm suite: its
# binaries are driver 535.261.03.
nvidia_version=535.261.03-1
pinned=(
    nvidia-smi
    libnvidia-ml1
    libcuda1
    nvidia-alternative
    nvidia-legacy-check
    libnvidia-ptxjitcompiler1
    libnvidia-pkcs11-openssl3
)
# What `apt-get install --no-install-recommends nvidia-smi libcuda1` adds to a
# `debootstrap --variant=minbase bookworm` root besides those, at bookworm's
# versions (nvidia-legacy-check's preinst runs lspci, hence pciutils).
unpinned=(
    glx-alternative-nvidia
    glx-alternative-mesa
    glx-diversions
    update-glx
    nvidia-installer-cleanup
    nvidia-support
    pciutils
    libpci3
    pci.ids
    libkmod2
    libssl3
)

die() { echo "debs: $*" >&2; exit 1; }

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: $0 DIR"
mkdir -p "$1" || die "cannot create $1"
dir=$(cd "$1" && pwd -P) || die "cannot enter $1"

# True when DIR/.complete names a file for every package wanted (at the pinned
# version for the NVIDIA ones) and each file it names is in DIR.
complete() {
    local name pkg found
    [ -f "$dir/.complete" ] || return 1
    while IFS= read -r name; do
        [ -n "$name" ] || continue
        [ -f "$dir/$name" ] || return 1
    done < "$dir/.complete"
    for pkg in "${pinned[@]}" "${unpinned[@]}"; do
        found=
        while IFS= read -r name; do
            case $name in
                "${pkg}_"*.deb) ;;
                *) continue ;;
            esac
            if [[ " ${pinned[*]} " == *" $pkg "* ]]; then
                [[ $name == "${pkg}_${nvidia_version//:/%3a}_"* ]] || continue
            fi
            found=1
            break
        done < "$dir/.complete"
        [ -n "$found" ] || return 1
    done
    return 0
}

exec 9>"$dir/.lock" || die "cannot open $dir/.lock"
flock 9 || die "cannot lock $dir/.lock"

if complete; then
    echo "$dir"
    exit 0
fi

# --- From here on the network is needed. -------------------------------------

if [ -n "${PNH_E2E_MIRROR:-}" ]; then
    mirror=$PNH_E2E_MIRROR
elif [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk 'tolower($1) == "uris:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

command -v apt-get >/dev/null || die "apt-get not found (this script wants a Debian machine)"
[ -r "$keyring" ] || die "$keyring is missing (package debian-archive-keyring)"
arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed"

# The private apt setup. APT_CONFIG is read before the parts directory, so
# pointing Dir::Etc::parts at an empty directory keeps the machine's
# apt.conf.d (its hooks, pins, extra index targets) out; only the settings
# needed to reach a mirror at all (proxies, date checks, retries, TLS) are
# carried over from the machine's configuration.
apt=$dir/.apt
mkdir -p "$apt/conf.d" "$apt/preferences.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/state" \
    || die "cannot create $apt"
echo "deb [signed-by=$keyring] $mirror $suite main contrib non-free" > "$apt/sources.list"
: > "$apt/status"
{
    echo "Dir::Etc::main \"/dev/null\";"
    echo "Dir::Etc::parts \"$apt/conf.d\";"
    apt-config dump 2>/dev/null | grep -E '^Acquire::((https?|ftp)::(Proxy|Verify-Peer|Verify-Host|CaInfo|CaPath)|Check-Valid-Until|Check-Date|Retries|ForceIPv4|ForceIPv6|http::Timeout|https::Timeout)( |::)' || true
} > "$apt/apt.conf"
export APT_CONFIG=$apt/apt.conf
opts=(
    -o "Dir::Etc::sourcelist=$apt/sources.list"
    -o Dir::Etc::sourceparts=-
    -o "Dir::Etc::preferences=$apt/preferences"
    -o "Dir::Etc::preferencesparts=$apt/preferences.d"
    -o "Dir::State=$apt/state"
    -o "Dir::State::Lists=$apt/lists"
    -o "Dir::State::status=$apt/status"
    -o "Dir::Cache=$apt/cache"
    -o "Dir::Cache::archives=$apt/cache/archives"
    -o "APT::Architecture=$arch"
    -o "APT::Architectures::=$arch"
    -o Acquire::Languages=none
    -o Debug::NoLocking=1
    -o APT::Get::List-Cleanup=0
    -o APT::Sandbox::User=root
)
# snapshot.debian.org serves suites whose Release files have long expired.
case $mirror in
    *://snapshot.debian.org/*) opts+=(-o Acquire::Check-Valid-Until=false) ;;
esac

echo "debs: fetching the bookworm package lists (main contrib non-free) from $mirror" >&2
apt-get "${opts[@]}" -q --error-on=any update >&2 || die "apt-get update against $mirror failed"

# Every package must resolve; the NVIDIA ones at exactly $nvidia_version.
specs=()
for pkg in "${pinned[@]}"; do
    versions=$(apt-cache "${opts[@]}" madison "$pkg" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }')
    [ -n "$versions" ] || die "$pkg is not in $suite at $mirror"
    grep -qxF "$nvidia_version" <<< "$versions" \
        || die "$pkg $nvidia_version is not in $suite at $mirror (it has: $(echo $versions))"
    specs+=("$pkg=$nvidia_version")
done
for pkg in "${unpinned[@]}"; do
    [ -n "$(apt-cache "${opts[@]}" madison "$pkg" 2>/dev/null)" ] || die "$pkg is not in $suite at $mirror"
    specs+=("$pkg")
done

partial=$dir/.partial
rm -rf "$partial"
mkdir "$partial"
echo "debs: downloading ${#specs[@]} packages" >&2
(cd "$partial" && apt-get "${opts[@]}" -q download "${specs[@]}") >&2 \
    || die "apt-get download failed (the files fetched so far are in $partial)"

# One file per package, and each the package and version asked for.
names=()
for spec in "${specs[@]}"; do
    pkg=${spec%%=*}
    files=("$partial/${pkg}_"*.deb)
    [ ${#files[@]} -eq 1 ] && [ -f "${files[0]}" ] || die "no single .deb for $pkg in $partial"
    got=$(dpkg-deb -f "${files[0]}" Package Version | awk '{ printf "%s%s", sep, $2; sep = "=" }') \
        || die "${files[0]} is not a readable .deb"
    case $spec in
        *=*) [ "$got" = "$spec" ] || die "${files[0]} is $got, not $spec" ;;
        *) [ "${got%%=*}" = "$pkg" ] || die "${files[0]} is $got, not $pkg" ;;
    esac
    names+=("${files[0]##*/}")
done

# Move them in: first withdraw the old list, then the files, then drop what
# the old set had and this one has not, and last name the new set.
rm -f "$dir/.complete"
for name in "${names[@]}"; do
    mv -f "$partial/$name" "$dir/$name"
done
for old in "$dir"/*.deb; do
    [ -e "$old" ] || continue
    [[ " ${names[*]} " == *" ${old##*/} "* ]] || rm -f "$old"
done
printf '%s\n' "${names[@]}" > "$dir/.complete.tmp"
mv -f "$dir/.complete.tmp" "$dir/.complete"
rm -rf "$partial"
echo "debs: ${#names[@]} packages in $dir" >&2

echo "$dir"
