#!/bin/sh
# Stand-in for the shell header of NVIDIA's .run files (makeself 1.6.0-nv):
# it states its payload's size in its --info text, extracts into
# $TMPDIR/selfgz<pid> (or --tmpdir's folder), and hands every argument it
# does not use itself to the installer unquoted, as NVIDIA's does
# (`$script $scriptargs $*`); --tmpdir is both used and passed on.
skip=@SKIP@
label="@LABEL@"
script=./nvidia-installer
targetdir="@TARGETDIR@"
TMPROOT=${TMPDIR:=/tmp}

if [ "$1" = "--info" ]; then
    echo
    echo "  Identification    : $label"
    echo "  Target directory  : $targetdir"
    echo "  Uncompressed size : @USIZE@ KB"
    echo "  Compression       : none"
    echo "  Application run after extraction : $script"
    echo
    exit 0
fi

run_script=y
keep=n
scriptargs=""
while [ "$1" ]; do
    case "$1" in
        "--extract-only"|"-x") run_script=n ;;
        "--keep") keep=y ;;
        "--tmpdir")
            TMPROOT=$2
            scriptargs="$scriptargs $1 $2"
            shift ;;
        *) scriptargs="$scriptargs $1" ;;
    esac
    shift
done

tmpdir="$TMPROOT/selfgz$$"
mkdir -p "$tmpdir" || {
    echo "Unable to create temporary directory $tmpdir; use the --tmpdir option" >&2
    exit 1
}
tail -n +$skip "$0" | (cd "$tmpdir" && tar xf -) || {
    echo "Error extracting $0" >&2
    exit 1
}
[ "$run_script" = y ] || exit 0
cd "$tmpdir/$targetdir" || exit 1
$script $scriptargs
res=$?
cd "$TMPROOT"
[ "$keep" = y ] || rm -rf "$tmpdir"
exit $res
