#!/bin/sh
# Stand-in NVIDIA runfile for the fake container: checks the flags the hook
# passes, and installs like nvidia-installer does in what the hook reads: it
# truncates its log, writes its record in backup.c's format (CRC-32/MPEG-2
# per file) and installs nvidia-smi, libnvidia-ml and libcuda. @VERSION@,
# @FAIL@, @STUBS@ and @CRC@ are replaced.
version=@VERSION@
tmpdir=
while [ $# -gt 0 ]; do
  case "$1" in
    --silent|--no-x-check|--no-nouveau-check|--no-opengl-files|--no-kernel-module|\
    --no-systemd|--no-install-compat32-libs|--install-libglvnd|--no-nvidia-modprobe) ;;
    --tmpdir) tmpdir=$2; shift ;;
    *) echo "ERROR: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done
log="$FAKE_ROOT/var/log/nvidia-installer.log"
mkdir -p "$FAKE_ROOT/var/log"
echo "installer run $version tmpdir=$tmpdir" > "$log"
echo "$version" >> "$FAKE_ROOT/.installer-runs"
if [ -e "$FAKE_ROOT/usr/lib/nvidia/alternate-install-present" ]; then
  echo "ERROR: The installation was canceled due to the availability or presence of an alternate driver installation." >> "$log"
  exit 1
fi
@FAIL@
lib=/usr/lib/x86_64-linux-gnu
mkdir -p "$FAKE_ROOT/var/lib/nvidia" "$FAKE_ROOT$lib" "$FAKE_ROOT/usr/bin"
rm -f "$FAKE_ROOT$lib"/libnvidia-ml.so.* "$FAKE_ROOT$lib"/libcuda.so.*
echo "$version" > "$FAKE_ROOT/usr/bin/nvidia-smi"
# Real ELF libraries with NVIDIA's sonames, built once by the test harness.
cp @STUBS@/libnvidia-ml.so "$FAKE_ROOT$lib/libnvidia-ml.so.$version"
cp @STUBS@/libcuda.so "$FAKE_ROOT$lib/libcuda.so.$version"
ln -sf "libnvidia-ml.so.$version" "$FAKE_ROOT$lib/libnvidia-ml.so.1"
ln -sf "libcuda.so.$version" "$FAKE_ROOT$lib/libcuda.so.1"
crc() {
  '@CRC@' "$FAKE_ROOT$1"
}
{
  printf '1.0-%s (%s)\nNVIDIA Accelerated Graphics Driver for Linux-x86_64\n' "$(echo $version | tr -d .)" "$version"
  for f in /usr/bin/nvidia-smi "$lib/libnvidia-ml.so.$version" "$lib/libcuda.so.$version"; do
    printf '1: %s\n%s\n' "$f" "$(crc "$f")"
  done
  printf '0: %s\n%s\n' "$lib/libnvidia-ml.so.1" "libnvidia-ml.so.$version" "$lib/libcuda.so.1" "libcuda.so.$version"
} > "$FAKE_ROOT/var/lib/nvidia/log"
