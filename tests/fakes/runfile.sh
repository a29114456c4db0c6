#!/bin/sh
# Stand-in NVIDIA runfile for the fake container: checks the flags the hook
# passes and installs the files the hook reads. @VERSION@ is replaced.
version=@VERSION@
tmpdir=
while [ $# -gt 0 ]; do
  case "$1" in
    --silent|--no-x-check|--no-nouveau-check|--no-opengl-files|--no-kernel-module) ;;
    --tmpdir) tmpdir=$2; shift ;;
    *) echo "ERROR: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done
log="$FAKE_ROOT/var/log/nvidia-installer.log"
mkdir -p "$FAKE_ROOT/var/log"
echo "installer run $version tmpdir=$tmpdir" >> "$log"
if [ -e "$FAKE_ROOT/usr/lib/nvidia/alternate-install-present" ]; then
  echo "ERROR: The installation was canceled due to the availability or presence of an alternate driver installation." >> "$log"
  exit 1
fi
@FAIL@
mkdir -p "$FAKE_ROOT/var/lib/nvidia" "$FAKE_ROOT/usr/lib/x86_64-linux-gnu" "$FAKE_ROOT/usr/bin"
rm -f "$FAKE_ROOT"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.*
printf '1.0-%s (%s)\nNVIDIA Accelerated Graphics Driver for Linux-x86_64 (%s)\n' "$(echo $version | tr -d .)" "$version" "$version" > "$FAKE_ROOT/var/lib/nvidia/log"
: > "$FAKE_ROOT/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.$version"
echo "$version" > "$FAKE_ROOT/usr/bin/nvidia-smi"
