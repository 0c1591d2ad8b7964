#!/bin/sh
# mmdebstrap hooks that overlap the second download with the essential install.
#
# mmdebstrap downloads the Essential:yes set, extracts and installs it with dpkg, and only
# then lets apt download what the variant adds (apt, Priority: required, --include) and
# install it: that second download (about 20 MB for minbase + systemd) waits for dpkg.
#   extract-hook:   mmdebstrap-prefetch.sh start ROOT PACKAGE...
#     starts `apt-get --download-only install PACKAGE...` in the background with
#     mmdebstrap's own apt configuration (so the chroot's sources, keys and archive
#     directory), while mmdebstrap installs the essential set;
#   essential-hook: mmdebstrap-prefetch.sh wait ROOT
#     waits for it. apt then finds the packages in /var/cache/apt/archives (checked
#     against the index, as any cached package) and downloads only what is missing.
# A prefetch that fails changes nothing but the time: apt downloads as it would have.
# No lock is taken (Debug::NoLocking): dpkg owns the chroot meanwhile, and the prefetch
# touches only the archive directory, whose packages mmdebstrap does not remove (it
# removes only those of its own download step).
set -u
mode="$1"
root="$2"
shift 2
state="$root/tmp/.xen-provision-prefetch"
case "$mode" in
start)
    (
        APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get -q -y -o Debug::NoLocking=true \
            -o APT::Get::Download-Only=true install "$@" > "$state.log" 2>&1
        echo $? > "$state.rc"
    ) < /dev/null > /dev/null 2>&1 &
    echo $! > "$state.pid"
    ;;
wait)
    [ -e "$state.pid" ] || exit 0
    pid=$(cat "$state.pid")
    while [ ! -e "$state.rc" ] && kill -0 "$pid" 2> /dev/null; do
        sleep 0.05
    done
    rc=$(cat "$state.rc" 2> /dev/null || echo killed)
    if [ "$rc" != 0 ]; then
        echo "W: the package prefetch failed ($rc); apt downloads them now:" >&2
        tail -3 "$state.log" >&2
    fi
    rm -f "$state.pid" "$state.rc" "$state.log"
    ;;
*)
    echo "usage: $0 start ROOT PACKAGE... | wait ROOT" >&2
    exit 2
    ;;
esac
