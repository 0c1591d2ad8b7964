#!/bin/sh
# A cut-short install.sh (from a truncated tarball) must not run half of itself: its last
# line is the marker below, and everything after the comments is one { ... } block, which
# sh reads whole before it runs any of it.
case $(tail -n 1 "$0" 2>/dev/null) in
    "# end of install.sh") ;;
    *) echo "install.sh: error: $0 is incomplete (from a cut-short tarball?); nothing was installed (unpack the tarball again)" >&2
       exit 1 ;;
esac
# Install a Xen build into DESTDIR, as the Xen manual's install.sh did:
#
#   tar zxvf xen-<version>-install.tgz; cd xen-<version>-install; sh ./install.sh
#
#   sh ./install.sh [--from TREE] [-q] [DESTDIR]     install TREE (default: install/ beside
#                                                    this script) into DESTDIR (default /)
#   sh ./install.sh --uninstall [-q] [DESTDIR]       remove what the record lists
#   sh ./install.sh --verify [--from TREE]           check TREE against its manifest.json
#
# No DESTDIR means /, as in the manual; an empty or blank one (an unset variable) is an
# error, never /. Before DESTDIR is touched, every file and link of TREE is checked against
# TREE/manifest.json (size and sha256, link targets, the directories it lists): a tree
# from a truncated or damaged tarball installs nothing and names its first bad file.
# Modes and symlinks are preserved. A file under etc/ that the user changed (or that was
# there before us) is never overwritten: ours is written beside it as FILE.xen-new. What
# was installed goes to DESTDIR/var/lib/xen-provision/installed.list (type, sha256 or link
# target, path), so --uninstall removes exactly that, and leaves any file changed since.
# Everything is first copied to temporary names; only when every copy succeeded are they
# renamed into place, so a failure leaves nothing half-installed.
#
# POSIX sh and awk, plus sha256sum, stat -c, readlink and xargs -0 (coreutils or busybox).
# Checksums and modes are gathered in a few batch commands and the plan is made by one
# awk program, so a tree with thousands of modules installs in seconds.
set -eu

{
PROG=install.sh
RECORD=var/lib/xen-provision/installed.list
TAB=$(printf '\t')

usage() {
    echo "usage: sh ./install.sh [--from TREE] [-q] [DESTDIR]" >&2
    echo "       sh ./install.sh --uninstall [-q] [DESTDIR]" >&2
    echo "       sh ./install.sh --verify [--from TREE]" >&2
    exit 2
}
die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { if [ -z "$QUIET" ]; then echo "$*"; fi; }

MODE=install
QUIET=
SRC=
DESTDIR=
GIVEN=
while [ $# -gt 0 ]; do
    case $1 in
        --uninstall) MODE=uninstall ;;
        --verify) MODE=verify ;;
        --from) [ $# -ge 2 ] || usage; SRC=$2; shift ;;
        --from=*) SRC=${1#--from=} ;;
        -q|--quiet) QUIET=1 ;;
        -h|--help) usage ;;
        -*) echo "$PROG: error: unknown option $1" >&2; usage ;;
        *) [ -z "$GIVEN" ] || usage; DESTDIR=$1; GIVEN=1 ;;
    esac
    shift
done
if [ "$MODE" = verify ] && [ -n "$GIVEN" ]; then usage; fi
if [ -n "$GIVEN" ]; then
    # "sh install.sh $UNSET" must not mean "install into /": only no DESTDIR at all does.
    case $DESTDIR in
        *[![:space:]]*) ;;
        *) die "DESTDIR is empty or blank (an unset variable?): give the directory to install into, or no DESTDIR at all for /" ;;
    esac
fi
DESTDIR=${DESTDIR:-/}
# Our lists are one path a line, TAB-separated, and awk reads backslashes as escapes.
NL='
'
for path in "$DESTDIR" "$SRC"; do
    case $path in
        *"$NL"*|*"$TAB"*|*\\*) die "cannot install with a newline, tab or backslash in DESTDIR or --from: give a plain path" ;;
    esac
done
case $DESTDIR in /*) ;; *) DESTDIR=$(pwd)/$DESTDIR ;; esac
# D is DESTDIR without its trailing slash: paths are "$D/$rel" ("/boot/..." for DESTDIR=/).
D=$(printf '%s' "$DESTDIR" | sed 's:/*$::')

for tool in sha256sum stat readlink find sort awk xargs; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' was not found (install coreutils/findutils)"
done

WORK=
OWNWORK=
CREATED_DESTDIR=
DONE=
PROBE=

rollback() {
    # Undo a failed run: the writability probe, staged temporaries, then the directories we
    # made, deepest first.
    if [ -n "$PROBE" ]; then rmdir "$PROBE" 2>/dev/null || true; fi
    # Stopped before the scratch lists existed (WORK unset, or not made yet): nothing made.
    if [ -z "$WORK" ] || [ ! -f "$WORK/staged" ]; then return 0; fi
    while IFS="$TAB" read -r tmp final; do
        rm -rf "$tmp"  # our temporary name: a file, a link or a new directory copied whole
    done < "$WORK/staged"
    sort -r "$WORK/created" | while IFS= read -r dir; do
        rmdir "$dir" 2>/dev/null || true
    done
    if [ -n "$CREATED_DESTDIR" ]; then rmdir "$D" 2>/dev/null || true; fi
}

finish() {
    status=$?
    if [ -z "$DONE" ]; then rollback; fi
    if [ -n "$OWNWORK" ]; then rm -rf "$WORK"; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A scratch directory for our lists, removed at exit (the traps are set first, so a signal
# from here on removes it; one that is not ours is never removed).
# Named by our PID; one left by a killed run whose PID we now have is skipped, not reused.
n=0
while :; do
    WORK=${TMPDIR:-/tmp}/xen-install.$$.$n
    OWNWORK=1
    if mkdir -m 700 "$WORK" 2>/dev/null; then break; fi
    OWNWORK=
    if [ ! -e "$WORK" ] || [ "$n" -ge 50 ]; then
        die "cannot create a scratch directory in ${TMPDIR:-/tmp} (set TMPDIR to a writable directory)"
    fi
    n=$((n + 1))
done
: > "$WORK/staged"      # temp<TAB>final, renamed into place at the end
: > "$WORK/created"     # directories this run created (removed again on failure)
: > "$WORK/record"      # the new installed.list
: > "$WORK/notes"
: > "$WORK/removed"
: > "$WORK/dirs"
: > "$WORK/record.plan"
: > "$WORK/conflict"
: > "$WORK/touched"

check_writable() {
    PROBE="$D/.xen-provision-probe.$$"  # set before mkdir: a signal between the two still removes it
    if ! mkdir "$PROBE" 2>/dev/null; then
        PROBE=
        die "DESTDIR $DESTDIR is not writable (run as root, or choose a DESTDIR you can write)"
    fi
    rmdir "$PROBE"
    PROBE=
}

# batch CMD LIST OUT: run CMD (sha256sum, or stat -c ...) in DIR over the relative paths of
# LIST (one a line), as "<value> ./<path>" lines in OUT. Nothing to do for an empty list.
batch() {
    : > "$4"
    if [ -s "$3" ]; then
        if ! (cd "$1" && sed 's:^:./:' "$3" | tr '\n' '\0' | xargs -0 $2) >> "$4" 2> "$WORK/batch.err"; then
            die "cannot read in $1: $(sed -n '1s/^[^:]*: //p' "$WORK/batch.err")"
        fi
    fi
}
sums() { batch "$1" sha256sum "$2" "$3"; }
modes() { batch "$1" "stat -c %a%n" "$2" "$3"; }

# Remove the entries (type<TAB>value<TAB>path lines) of FILE that are still what we installed;
# keep, and say so, any file changed since. Directories are collected for remove_dirs.
remove_entries() {
    : > "$WORK/rm.files"
    while IFS="$TAB" read -r type value path; do
        case $type in
            f) if [ -f "$D/$path" ] && [ ! -L "$D/$path" ]; then echo "$path" >> "$WORK/rm.files"; fi ;;
            l)
                if [ -L "$D/$path" ] && [ "$(readlink "$D/$path")" = "$value" ]; then
                    rm -f "$D/$path"
                    echo "$path" >> "$WORK/removed"
                fi ;;
            d) echo "$path" >> "$WORK/dirs" ;;
        esac
    done < "$1"
    sums "$D/" "$WORK/rm.files" "$WORK/rm.sums"
    : > "$WORK/rm.list"
    awk -F "$TAB" -v sums="$WORK/rm.sums" -v list="$WORK/rm.list" -v D="$D" '
        BEGIN { while ((getline line < sums) > 0) have[substr(line, 69)] = substr(line, 1, 64) }
        $1 == "f" && ($3 in have) {
            if (have[$3] == $2) print $3 > list
            else print "kept " D "/" $3 ": changed since it was installed"
        }' "$1" > "$WORK/rm.kept"
    if [ -s "$WORK/rm.list" ]; then
        (cd "$D/" && tr '\n' '\0' < "$WORK/rm.list" | xargs -0 rm -f)
        cat "$WORK/rm.list" >> "$WORK/removed"
    fi
    while IFS= read -r line; do say "$line"; done < "$WORK/rm.kept"
}

# Remove the recorded directories that are now empty, deepest first.
remove_dirs() {
    sort -r "$WORK/dirs" | while IFS= read -r dir; do
        rmdir "$D/$dir" 2>/dev/null || true
    done
}

# Make directory REL (and its missing parents) under DESTDIR, remembering which we created.
# (sh has no local variables: functions use their positional parameters.)
ensure_dir() {
    if [ -d "$D/$1" ]; then return 0; fi
    if [ "$(dirname "$1")" != . ]; then ensure_dir "$(dirname "$1")"; fi
    if [ -e "$D/$1" ] || [ -L "$D/$1" ]; then
        die "cannot install: $D/$1 exists and is not a directory"
    fi
    # Remembered before mkdir, so a signal between the two still removes it (rollback's rmdir
    # of one that never came is harmless).
    echo "$D/$1" >> "$WORK/created"
    mkdir -m 755 "$D/$1" 2>/dev/null || die "cannot create directory $D/$1 (not writable?)"
    printf 'd\t-\t%s\n' "$1" >> "$WORK/record"
}

# ------------------------------------------------------------------ uninstall

if [ "$MODE" = uninstall ]; then
    [ -f "$D/$RECORD" ] || die "nothing to uninstall: no record at $D/$RECORD"
    check_writable
    [ -w "$(dirname "$D/$RECORD")" ] || die "cannot modify $(dirname "$D/$RECORD") (run as root)"
    # From here on a Ctrl-C or SIGTERM (ignored, and by the commands run too) cannot leave
    # half the files removed and the record saying they are all there.
    trap '' INT TERM
    remove_entries "$D/$RECORD"
    rm -f "$D/$RECORD"
    remove_dirs
    DONE=1
    say "removed $(wc -l < "$WORK/removed" | tr -d ' ') files and links from $DESTDIR"
    exit 0
fi

# ------------------------------------------------------------------ the tree, checked

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:-$HERE/install}
[ -d "$SRC" ] || die "nothing to install: $SRC is not a directory (run install.sh from the unpacked xen-<version>-install directory, or give --from TREE)"
SRC=$(cd "$SRC" && pwd)

# The tree, sorted (parents before children), with names we can record safely.
(cd "$SRC" && find . -print) | sed -e '/^\.$/d' -e 's:^\./::' | LC_ALL=C sort > "$WORK/tree"
if grep -q "[$TAB\\\\]" "$WORK/tree"; then
    die "cannot install names containing tabs or backslashes: $(grep "[$TAB\\\\]" "$WORK/tree" | head -n 1)"
fi

# Each entry's type (shell builtins only, no process per file), then checksums, modes and
# sizes in batches.
: > "$WORK/src.files"
while IFS= read -r rel; do
    slink=
    if [ -L "$SRC/$rel" ]; then t=l; slink=$(readlink "$SRC/$rel")
    elif [ -d "$SRC/$rel" ]; then t=d
    elif [ -f "$SRC/$rel" ]; then t=f; echo "$rel" >> "$WORK/src.files"
    else t=x
    fi
    printf '%s\t%s\t%s\n' "$t" "$rel" "$slink"
done < "$WORK/tree" > "$WORK/src"
sums "$SRC" "$WORK/src.files" "$WORK/src.sums"
modes "$SRC" "$WORK/src.files" "$WORK/src.modes"
batch "$SRC" "stat -c %s%n" "$WORK/src.files" "$WORK/src.sizes"

# Every file, link and listed directory against manifest.json, which doit stage writes with
# json.dumps(indent=2, sort_keys=True): one key or value a line, read here line by line.
# Prints "problems found<TAB>files checked", then "path<TAB>problem" lines.
if [ "$MODE" = verify ]; then NOTHING=; else NOTHING="; nothing was installed"; fi
AGAIN="unpack the tarball again, or stage it again: doit forget stage; doit world"
[ -f "$SRC/manifest.json" ] || die "$SRC has no manifest.json, so its files cannot be checked$NOTHING ($AGAIN)"
LC_ALL=C awk -F "$TAB" -v W="$WORK" -v M="$SRC/manifest.json" '
    function hexval(h,   i, v) {
        v = 0; h = tolower(h)
        for (i = 1; i <= 4; i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
        return v
    }
    function utf8(c) {
        if (c < 128) return sprintf("%c", c)
        if (c < 2048) return sprintf("%c%c", 192 + int(c / 64), 128 + c % 64)
        if (c < 65536) return sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64)
        return sprintf("%c%c%c%c", 240 + int(c / 262144), 128 + int(c / 4096) % 64, 128 + int(c / 64) % 64, 128 + c % 64)
    }
    function unquote(s,   out, i, c, cp) {  # the inside of a JSON string, escapes decoded
        out = ""
        while ((i = index(s, "\\")) > 0) {
            out = out substr(s, 1, i - 1); c = substr(s, i + 1, 1)
            if (c == "u") {
                cp = hexval(substr(s, i + 2, 4)); s = substr(s, i + 6)
                if (cp >= 55296 && cp < 56320 && substr(s, 1, 2) == "\\u") {
                    cp = 65536 + (cp - 55296) * 1024 + hexval(substr(s, 3, 4)) - 56320; s = substr(s, 7)
                }
                out = out utf8(cp)
                continue
            }
            out = out (c == "n" ? "\n" : c == "t" ? "\t" : c == "r" ? "\r" : c == "b" ? "\b" : c == "f" ? "\f" : c)
            s = substr(s, i + 2)
        }
        return out s
    }
    function problem(path, what) { if (!(path in bad)) { bad[path] = what; nbad++ } }
    BEGIN {
        depth = 0; done = 0; broken = 0
        while ((getline line < M) > 0) {
            sub(/^[ \t]+/, "", line); sub(/[ \t\r]+$/, "", line)
            if (line == "") continue
            if (done) { broken = 1; break }
            key = ""; haskey = 0
            if (match(line, /^"([^"\\]|\\.)*"[ \t]*:[ \t]*/)) {
                match(line, /^"([^"\\]|\\.)*"/); key = unquote(substr(line, 2, RLENGTH - 2))
                sub(/^"([^"\\]|\\.)*"[ \t]*:[ \t]*/, "", line); haskey = 1
            }
            sub(/,$/, "", line)
            if (line == "{" || line == "[") { stack[++depth] = key; continue }
            if (line == "}" || line == "]") { if (--depth == 0) done = 1; if (depth < 0) broken = 1; continue }
            value = line
            if (value ~ /^"/) value = unquote(substr(value, 2, length(value) - 2))
            if (depth == 3 && stack[2] == "files" && haskey) {
                path = stack[3]; listed[path] = 1
                if (key == "sha256") msha[path] = value
                else if (key == "size") msize[path] = value
                else if (key == "link") mlink[path] = value
            } else if (depth == 2 && stack[2] == "dirs" && !haskey) {
                mdir[value] = 1
            }
        }
        if (!done || broken) { print "broken"; exit }
        while ((getline line < (W "/src.sums")) > 0) ssum[substr(line, 69)] = substr(line, 1, 64)
        while ((getline line < (W "/src.sizes")) > 0) { i = index(line, "./"); ssize[substr(line, i + 2)] = substr(line, 1, i - 1) }
    }
    $2 == "manifest.json" { next }
    {
        t = $1; path = $2; slink = $3; seen[path] = 1; checked++
        if (t == "d") { if (!(path in mdir) && (path in listed)) problem(path, "a directory, manifest.json lists a file"); next }
        if (!(path in listed)) { problem(path, "not in manifest.json"); next }
        if (path in mlink) {
            if (t != "l") problem(path, "not a symlink; manifest.json says a link to " mlink[path])
            else if (slink != mlink[path]) problem(path, "a link to " slink ", manifest.json says " mlink[path])
        } else if (t != "f") problem(path, "not a regular file")
        else if (ssize[path] != msize[path])
            problem(path, ssize[path] " bytes, manifest.json says " msize[path] (ssize[path] + 0 < msize[path] + 0 ? " (truncated?)" : ""))
        else if (ssum[path] != msha[path]) problem(path, "its sha256 differs from manifest.json")
    }
    END {
        if (broken || !done) exit
        for (path in listed) if (!(path in seen)) problem(path, "missing (manifest.json lists it)")
        for (path in mdir) if (!(path in seen)) problem(path, "missing directory (manifest.json lists it)")
        print nbad + 0 "\t" checked + 0
        for (path in bad) print path "\t" bad[path]
    }' "$WORK/src" > "$WORK/verify"
if [ "$(head -n 1 "$WORK/verify")" = broken ]; then
    die "$SRC/manifest.json is incomplete or not as doit stage writes it, so the tree cannot be checked$NOTHING ($AGAIN)"
fi
IFS="$TAB" read -r nbad checked < "$WORK/verify"
if [ "$nbad" != 0 ]; then
    first=$(sed 1d "$WORK/verify" | LC_ALL=C sort | head -n 1)
    die "$SRC does not match its manifest.json: ${first%%"$TAB"*}: ${first#*"$TAB"}$NOTHING ($AGAIN)"
fi
if [ "$MODE" = verify ]; then
    DONE=1
    say "$SRC: $checked files, links and directories match manifest.json"
    exit 0
fi

# ------------------------------------------------------------------ install

if [ ! -d "$D/" ]; then
    parent=$(dirname "$D")
    [ -d "$parent" ] || die "DESTDIR $DESTDIR does not exist, nor does its parent $parent"
    CREATED_DESTDIR=1  # before mkdir, for the same reason as in ensure_dir
    if ! mkdir "$D" 2>/dev/null; then
        CREATED_DESTDIR=
        die "DESTDIR $DESTDIR is not writable (cannot create it in $parent)"
    fi
fi
check_writable
ensure_dir "$(dirname "$RECORD")"

# Facts at the destination: each entry's type there, then checksums and modes in batches.
: > "$WORK/dest.files"
while IFS="$TAB" read -r t rel slink; do
    dest=$rel
    # The build manifest describes the installation; it lives beside the record.
    if [ "$rel" = manifest.json ]; then dest=var/lib/xen-provision/manifest.json; fi
    dlink=
    if [ "$t" = d ] && [ -d "$D/$dest" ]; then dt=d  # a link to a directory will do (/lib, /var/run)
    elif [ -L "$D/$dest" ]; then dt=l; dlink=$(readlink "$D/$dest")
    elif [ -d "$D/$dest" ]; then dt=d
    elif [ -f "$D/$dest" ]; then dt=f; [ "$t" != f ] || echo "$dest" >> "$WORK/dest.files"
    elif [ -e "$D/$dest" ]; then dt=x
    else dt=-
    fi
    case $dest in
        etc/*) if [ "$t" = f ] && [ -f "$D/$dest.xen-new" ]; then echo "$dest.xen-new" >> "$WORK/dest.files"; fi ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$dt" "$rel" "$dest" "$slink" "$dlink"
done < "$WORK/src" > "$WORK/entries"
sums "$D/" "$WORK/dest.files" "$WORK/dest.sums"
modes "$D/" "$WORK/dest.files" "$WORK/dest.modes"
if [ -f "$D/$RECORD" ]; then cp "$D/$RECORD" "$WORK/old"; else : > "$WORK/old"; fi

# The plan: what to create, copy and link, what to keep, and the new record. A conflict
# is found here, before anything is written.
awk -F "$TAB" -v W="$WORK" -v D="$D" -v pid="$$" '
    function loadmodes(file, arr,   line, i) {
        while ((getline line < file) > 0) { i = index(line, "./"); arr[substr(line, i + 2)] = substr(line, 1, i - 1) }
    }
    function staged(dest,   dir, base) {
        dir = dest; base = dest
        if (sub(/\/[^\/]*$/, "", dir)) sub(/^.*\//, "", base); else dir = "."
        if (!(dir in touched)) { touched[dir] = 1; print dir > (W "/touched") }
        return dir "/.xen-new." pid "." base
    }
    function conflict(msg) { if (!failed) print msg > (W "/conflict"); failed = 1 }
    function record(type, value, path) { print type "\t" value "\t" path > (W "/record.plan") }
    function copy(rel, dest) { print "copy\t" rel "\t" dest "\t" staged(dest); installed++ }
    function keep_theirs(rel, dest,   new) {
        # The user changed this etc/ file (or it was there before us): ours goes beside it.
        new = dest ".xen-new"
        if ((new in dsum) && dsum[new] == ssum[rel] && dmode[new] == smode[rel]) unchanged++
        else copy(rel, new)
        print "kept your " D "/" dest "; the new version is " D "/" new > (W "/notes")
        record("f", ssum[rel], new)
    }
    BEGIN {
        # sha256sum prints "<64 hex>  ./path"; stat -c %a%n prints "<mode>./path"
        while ((getline line < (W "/src.sums")) > 0) ssum[substr(line, 69)] = substr(line, 1, 64)
        while ((getline line < (W "/dest.sums")) > 0) dsum[substr(line, 69)] = substr(line, 1, 64)
        loadmodes(W "/src.modes", smode); loadmodes(W "/dest.modes", dmode)
        while ((getline line < (W "/old")) > 0) { split(line, f, "\t"); old[f[3]] = f[1] "\t" f[2] }
    }
    {
        t = $1; dt = $2; rel = $3; dest = $4; slink = $5; dlink = $6
        if (top != "" && index(rel, top "/") == 1) {
            # Inside a directory that is new here: copied whole (one cp, one rename).
            if (t == "x") conflict("cannot install " rel ": only files, directories and symlinks are supported")
            else if (t == "d") record("d", "-", dest)
            else { record(t, t == "l" ? slink : ssum[rel], dest); installed++ }
            next
        }
        top = ""
        if (t == "d" && dt == "-") {
            print "copytree\t" rel "\t" dest "\t" staged(dest); record("d", "-", dest); top = rel
        } else if (t == "d") {
            if (dt != "d") conflict("cannot install: " D "/" dest " exists and is not a directory")
            else if (old[dest] == "d\t-") record("d", "-", dest)
        } else if (t == "l") {
            if (dt == "d" || dt == "x") conflict("cannot install " dest ": " D "/" dest " is in the way")
            else if (dt == "l" && dlink == slink) unchanged++
            else { print "link\t" slink "\t" dest "\t" staged(dest); installed++ }
            record("l", slink, dest)
        } else if (t == "f") {
            etc = (dest ~ /^etc\//)
            if (dt == "d" || dt == "x") conflict("cannot install " dest ": " D "/" dest " is in the way")
            else if (dt == "l" && etc) keep_theirs(rel, dest)
            else if (dt == "f" && dsum[dest] == ssum[rel] && dmode[dest] == smode[rel]) {
                unchanged++; record("f", ssum[rel], dest)
            } else if (dt == "f" && etc && dsum[dest] != ssum[rel] && old[dest] != "f\t" dsum[dest]) keep_theirs(rel, dest)
            else { copy(rel, dest); record("f", ssum[rel], dest) }
        } else conflict("cannot install " rel ": only files, directories and symlinks are supported")
    }
    END {
        # Directories an earlier install created stay ours (uninstall removes them if empty).
        for (p in old) if (old[p] == "d\t-") record("d", "-", p)
        print installed + 0 "\t" unchanged + 0 > (W "/counts")
    }' "$WORK/entries" > "$WORK/plan"
if [ -s "$WORK/conflict" ]; then die "$(cat "$WORK/conflict")"; fi
# Every directory we are about to write in must be writable (a read-only mount, another
# owner): say so before writing anything.
while IFS= read -r dir; do
    [ -w "$D/$dir" ] || die "cannot write in $D/$dir (not writable: run as root?)"
done < "$WORK/touched"

# Carry out the plan: directories, then copies and links under temporary names.
while IFS="$TAB" read -r op a b c; do
    case $op in
        copytree)
            printf '%s\t%s\n' "$D/$c" "$D/$b" >> "$WORK/staged"
            cp -pRP "$SRC/$a" "$D/$c" 2>/dev/null || die "cannot write in $(dirname "$D/$b") (full?)" ;;
        copy)
            printf '%s\t%s\n' "$D/$c" "$D/$b" >> "$WORK/staged"
            cp -p "$SRC/$a" "$D/$c" 2>/dev/null || die "cannot write in $(dirname "$D/$b") (full?)" ;;
        link)
            printf '%s\t%s\n' "$D/$c" "$D/$b" >> "$WORK/staged"
            ln -s "$a" "$D/$c" 2>/dev/null || die "cannot write in $(dirname "$D/$b")" ;;
    esac
done < "$WORK/plan"

# Everything is staged: rename into place. From here on a Ctrl-C or SIGTERM is ignored (by
# the commands run too): the renames, the removal of stale files and the record are one
# commit, which takes moments; cut short, the record would not say what is installed.
trap '' INT TERM
case ",${XEN_PROVISION_PAUSE_AT:-}," in  # a test's hook, as provision.undo.pause_point
    *,committing,*) echo "paused at committing" >&2
        # A test that cannot read our stderr (python -m provision install reads it) waits for this.
        if [ -n "${XEN_PROVISION_PAUSE_FILE:-}" ]; then : > "$XEN_PROVISION_PAUSE_FILE"; fi
        sleep "${XEN_PROVISION_PAUSE_SECONDS:-120}" ;;
esac
while IFS="$TAB" read -r tmp final; do
    mv -f "$tmp" "$final"
done < "$WORK/staged"
DONE=1

cat "$WORK/record.plan" >> "$WORK/record"
# Entries of an earlier install that this tree no longer has (an upgrade): remove them.
# (an etc/ file we now write as FILE.xen-new is the user's: not stale)
awk -F "$TAB" 'NR == FNR { new[$3] = 1; next } !($3 in new) && !(($3 ".xen-new") in new) && $1 != "d"' \
    "$WORK/record" "$WORK/old" > "$WORK/stale"
remove_entries "$WORK/stale"

# The record, sorted by path, written atomically; rewritten only when it changed.
LC_ALL=C sort -u -t "$TAB" -k3,3 -k1,1 "$WORK/record" > "$WORK/record.sorted"
if ! cmp -s "$WORK/record.sorted" "$D/$RECORD" 2>/dev/null; then
    cp "$WORK/record.sorted" "$D/$RECORD.new"
    chmod 644 "$D/$RECORD.new"
    mv -f "$D/$RECORD.new" "$D/$RECORD"
fi
while IFS= read -r note; do
    echo "$PROG: note: $note" >&2
done < "$WORK/notes"
IFS="$TAB" read -r installed unchanged < "$WORK/counts"
say "installed $installed files and links into $DESTDIR ($unchanged unchanged); record: $D/$RECORD"
}
# end of install.sh
