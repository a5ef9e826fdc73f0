#!/bin/bash
# Prepare this checkout on Debian 12 for the demo and the tests:
#   - the Debian packages wcfs needs (fuse3 for fusermount3 and libfuse3,
#     python3-venv for Debian's python to make a virtual environment), and
#     those of the PostgreSQL tests: postgresql for the private clusters of
#     devtools/pgcluster.py, and libpq-dev, gcc, libc6-dev and python3-dev to
#     build psycopg2 (see below);
#   - .venv, a virtual environment made with Debian's /usr/bin/python3,
#     holding requirements.txt and this project installed in editable mode.
# Idempotent: each step is skipped when already done; .venv is brought up to
# date again when requirements.txt, setup.py or the system python change.
# Quiet on success; on failure it names the step and shows its output.
set -eu

cd "$(dirname "$0")"
root=$(pwd)
python=/usr/bin/python3
# psycopg2 is built from source against Debian's libpq rather than taken as
# psycopg2-binary: RelStorage's "postgresql" extra, which setup.py's extra
# names, requires the distribution psycopg2 (pip would build it anyway), and
# the binary wheel carries its own copies of libpq and libssl.
apt_packages="fuse3 python3-venv debhelper dh-python dpkg-dev fakeroot lintian mandoc man-db
              postgresql libpq-dev gcc libc6-dev python3-dev"

sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi

# Two runs at once (./demo.sh beside ./test.sh) take turns.
exec 9<"$root/setup.sh"
flock 9

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run WHAT CMD...: run CMD with its output in $log; on failure print it and stop.
run() {
    local what=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "setup.sh: $what failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=
for pkg in $apt_packages; do
    if ! installed "$pkg"; then
        missing="$missing $pkg"
    fi
done
# The tests, the demo and the benchmarks run private clusters and need no
# system-wide one: on a machine without PostgreSQL yet, keep the postinst
# from creating (and starting) the "main" cluster. In createcluster.d, as
# createcluster.conf itself is ucf's; a machine that already has PostgreSQL
# stays as its administrator set it up.
if ! installed postgresql-common; then
    run "disabling PostgreSQL's main cluster" $sudo sh -c 'mkdir -p /etc/postgresql-common/createcluster.d &&
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/wcfs.conf'
fi
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    run "apt-get update" $sudo apt-get update
    run "installing Debian packages:$missing" $sudo apt-get install -y --no-install-recommends $missing
fi

if [ ! -e /dev/fuse ]; then
    $sudo modprobe fuse >/dev/null 2>&1 || true
    if [ ! -e /dev/fuse ]; then
        echo "setup.sh: /dev/fuse is missing: this machine's kernel does not offer FUSE (modprobe fuse failed)" >&2
        exit 1
    fi
fi

stamp=.venv/.setup-stamp
want=$( { cat requirements.txt setup.py; "$python" -VV; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c '' 2>/dev/null; then
    exit 0
fi

if ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    rm -rf .venv
    run "creating .venv with $python" "$python" -m venv .venv
fi
rm -f "$stamp"
run "installing requirements.txt into .venv" .venv/bin/pip install -q -r requirements.txt
run "installing wcfs into .venv" .venv/bin/pip install -q -e '.[postgresql]'
echo "$want" >"$stamp"
