# How nvidia-installer reads its record of an install (backup.c, the same
# from 470 to 590), for the stand-ins of nvidia-installer and of the
# nvidia-uninstall it leaves behind: sandbox.sh puts it into both. They
# define `error` (a ui_error: logged, and the run goes on) and $record.
# backup.c's get_installed_driver_version_and_descr: open, fstat, the size
# in an int, mmap of that many bytes, the first two lines.
installed_version() {
    [ -e "$record" ] || return 1
    if [ -p "$record" ]; then
        # open(O_RDONLY) of a FIFO waits for a writer.
        exec 3< "$record"
    fi
    if [ -d "$record" ]; then
        # mmap of a folder fails; the MAP_FAILED pointer is read as the file.
        echo "Segmentation fault" >&2
        kill -s SEGV $$
    fi
    [ -f "$record" ] || return 1
    size=$(stat -Lc %s "$record")
    length=$(( (size + 2147483648) % 4294967296 - 2147483648 ))
    [ "$length" -ge 1 ] || return 1
    head -c "$length" "$record" | awk 'NR == 1 { v = $0 } NR == 2 { d = 1 } END { exit !(v ~ /\(/ && d) }'
}
# backup.c's read_backup_log_file, in do_uninstall.
read_backup_log_file() {
    [ "$(stat -Lc %a /var/lib/nvidia)" = 700 ] ||
        { error "The directory permissions of /var/lib/nvidia have been changed sincethe directory was created!"; return 1; }
    [ "$(stat -Lc %a "$record")" = 600 ] ||
        { error "The file permissions of $record have been changed since the file was written!"; return 1; }
    line=$(awk 'NR <= 2 { next }
        want == "" { if ($0 !~ /^[0-9]+: \//) { print NR; exit } split($0, a, ":"); n = a[1] + 0
                     want = n == 1 ? "crc" : n == 0 ? "target" : n == 2 ? "target2" : n >= 100 ? "crcmode" : "bad"
                     if (want == "bad") { print NR; exit } next }
        want == "crc" { if ($0 !~ /^[0-9]+$/) { print NR; exit } want = ""; next }
        want == "crcmode" { if ($0 !~ /^[0-9]+ [0-7]+ [0-9]+ [0-9]+$/) { print NR; exit } want = ""; next }
        want == "target2" { want = "mode"; next }
        want == "mode" { if ($0 !~ /^[0-7]+ [0-9]+ [0-9]+$/) { print NR; exit } want = ""; next }
        { want = "" }' "$record")
    [ -z "$line" ] || { error "Error while parsing line $line of '$record'."; return 1; }
}
