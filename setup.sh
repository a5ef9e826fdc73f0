#!/bin/bash
# Prepare this checkout on Debian 12 for the demo and the tests:
#   - the Debian packages wcfs needs (fuse3 for fusermount3 and libfuse3,
#     python3-venv for Debian's python to make a virtual environment), and
#     those of the PostgreSQL tests: postgresql for the private clusters of
#     devtools/pgcluster.py, and libpq-dev, gcc, libc6-dev and python3-dev to
#     build psycopg2 (see below);
#   - .venv, a virtual environment made with Debian's /usr/bin/python3,
#     holding requirements.txt and this project installed in editable mode;
#   - .venv37, wendelin.core 0.13 on pyenv's Python 3.7, where it can be had.
# Idempotent: each step is skipped when already done; .venv is brought up to
# date again when requirements.txt, setup.py or the system python change,
# .venv37 when its pins or its python change.
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

# .venv: this project and requirements.txt, with Debian's python.
setup_venv() {
    local stamp=.venv/.setup-stamp want
    want=$( { cat requirements.txt setup.py; "$python" -VV; } | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c '' 2>/dev/null; then
        return
    fi
    if ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
        rm -rf .venv
        run "creating .venv with $python" "$python" -m venv .venv
    fi
    rm -f "$stamp"
    run "installing requirements.txt into .venv" .venv/bin/pip install -q -r requirements.txt
    run "installing wcfs into .venv" .venv/bin/pip install -q -e '.[postgresql]'
    echo "$want" >"$stamp"
}

# .venv37: the real wendelin.core 0.13, for the tests that check zbig's format
# against it (devtools/wendelin37.py). It installs from PyPI on Python <= 3.7
# only, and builds its C parts against numpy < 1.22 with setuptools < 60;
# ZODB and ZEO < 6 run there. Python 3.7 is pyenv's, installed if pyenv can;
# where it cannot be had this says so and goes on (those tests then skip).
venv37_pins="setuptools<60 wheel numpy<1.22 | wendelin.core==0.13 | ZODB<6 ZEO<6"
python37() {
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv} p
    for p in "$pyenv_root"/versions/3.7*/bin/python3.7; do
        [ -x "$p" ] && { echo "$p"; return; }
    done
    if command -v pyenv >/dev/null && pyenv install -s 3.7.16 >"$log" 2>&1; then
        echo "$pyenv_root/versions/3.7.16/bin/python3.7"
    fi
}
setup_venv37() {
    local stamp=.venv37/.setup-stamp want py
    py=$(python37)
    if [ -z "$py" ]; then
        echo "setup.sh: no Python 3.7 (pyenv's) here: .venv37 with wendelin.core 0.13 is not made," \
             "and the tests of tests/test_wendelin_format.py will skip" >&2
        return
    fi
    want=$( { echo "$venv37_pins"; "$py" -VV; } | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv37/bin/python -c '' 2>/dev/null; then
        return
    fi
    rm -rf .venv37
    run "creating .venv37 with $py" "$py" -m venv .venv37
    run "installing numpy into .venv37" .venv37/bin/pip install -q 'setuptools<60' wheel 'numpy<1.22'
    run "building wendelin.core 0.13 in .venv37" \
        .venv37/bin/pip install -q --no-build-isolation wendelin.core==0.13
    run "installing ZODB and ZEO into .venv37" .venv37/bin/pip install -q 'ZODB<6' 'ZEO<6'
    echo "$want" >"$stamp"
}

setup_venv
setup_venv37
