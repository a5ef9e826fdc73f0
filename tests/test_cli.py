"""The command line of SPEC §2, checked on real wcfs.py processes (foreground mode).

- `--help` and `--version` exit 0;
- usage errors exit 2, runtime failures exit 1, each with one line on stderr
  that names what was wrong and no traceback;
- SIGTERM and SIGINT unmount and exit 0;
- a stale mount left by a killed wcfs is cleaned up by the next one;
- `file://` databases are served, also a Python 2 FileStorage (magic FS21);
- `-o` reaches the mount, `--debug` logs FUSE requests.
"""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from ZODB.utils import u64

from devtools.procs import free_port, is_mounted, wait_for
from devtools.wcfsproc import ROOT
from devtools.py2str import zbigfile as py2str_zbigfile
from zhelp import assert_one_line_error, read_head

import wcfs

RUN_TIMEOUT = 60        # seconds for a wcfs that is expected to exit by itself
BLKSIZE = 64 << 10

# Every option of SPEC §2, as spelled on the command line.
SPEC_OPTIONS = ['--help', '--version', '-d', '--daemon', '--pidfile', '--logfile', '--debug',
                '--autoexit', '--kill-timeout', '--revdir-timeout', '--db-timeout', '-o']


def run_wcfs(*args, timeout=RUN_TIMEOUT):
    """Run wcfs.py with args to its end; -> CompletedProcess with text output."""
    return subprocess.run([sys.executable, str(ROOT / 'wcfs.py'), *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def mount_options(path):
    """The options field of path's line in /proc/mounts."""
    path = os.path.realpath(path)
    with open('/proc/mounts') as f:
        for line in f:
            fields = line.split()
            if fields[1] == path:
                return fields[3].split(',')
    raise AssertionError('%s is not mounted' % path)


def sample_data():
    """Content for a test file: three full blocks, a hole, a short last block."""
    data = bytearray(os.urandom(3 * BLKSIZE))
    data += bytes(BLKSIZE)
    data += b'tail' + bytes(100)
    return bytes(data)


def write_bigfile(db, data, py2str=False):
    """Commit a ZBigFile holding data (ZBlk0 and ZBlk1 blocks) as root['f'];
    -> (oid, the content wcfs must serve)."""
    conn = db.open()
    try:
        f = py2str_zbigfile(BLKSIZE, py2str)
        for blk in range(-(-len(data) // BLKSIZE)):
            piece = data[blk * BLKSIZE:(blk + 1) * BLKSIZE]
            if piece.rstrip(b'\0'):
                f.write_block(blk, piece, 'ZBlk1' if blk % 2 else 'ZBlk0')
        conn.root()['f'] = f
        transaction.commit()
        return u64(f._p_oid), f.read()
    finally:
        conn.close()



def make_filestorage(path, data, py2str=False):
    """Write a FileStorage at path holding one ZBigFile, and close it; -> (oid, content)."""
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(path)))
    try:
        return write_bigfile(db, data, py2str)
    finally:
        db.close()


# ---- --help, --version ----

@pytest.mark.parametrize('option', SPEC_OPTIONS)
def test_help_lists_option(option):
    """Every option of SPEC §2 is there: a missing one fails, it never skips."""
    assert option in wcfs.make_parser()._option_string_actions, '%s is not in wcfs.py' % option
    r = run_wcfs('--help')
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''
    assert 'wcfs [options] ZURL MOUNTPOINT' in r.stdout
    words = r.stdout.replace(',', ' ').replace('=', ' ').split()
    assert option in words, r.stdout


def test_version_prints_wcfs_version():
    r = run_wcfs('--version')
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'wcfs %s\n' % wcfs.__version__
    assert r.stdout.split()[1][0].isdigit()


# ---- usage errors: exit 2 ----

def test_no_arguments_is_usage_error():
    assert_one_line_error(run_wcfs(), 2, 'ZURL')


def test_unknown_option_is_usage_error(tmp_path):
    assert_one_line_error(run_wcfs('--no-such-option', 'zeo://127.0.0.1:1', tmp_path), 2,
                          '--no-such-option')


def test_non_number_timeout_is_usage_error(tmp_path):
    assert_one_line_error(run_wcfs('--revdir-timeout', 'abc', 'zeo://127.0.0.1:1', tmp_path), 2,
                          '--revdir-timeout', 'abc')


def test_unparsable_zurl_is_usage_error(tmp_path):
    assert_one_line_error(run_wcfs('zeo://host:notaport', tmp_path), 2, 'zeo://host:notaport')


def test_unknown_scheme_is_usage_error(tmp_path):
    assert_one_line_error(run_wcfs('foo://x', tmp_path), 2, 'foo://x')


# ---- runtime failures: exit 1 ----

def test_unreachable_database_is_runtime_failure(tmp_path):
    zurl = 'zeo://127.0.0.1:%d' % free_port()
    t0 = time.monotonic()
    r = run_wcfs('--db-timeout', '2', zurl, tmp_path)
    elapsed = time.monotonic() - t0
    assert_one_line_error(r, 1, zurl)
    assert elapsed < 2 + 15, 'start-up waited %.1f s with --db-timeout 2' % elapsed
    assert not is_mounted(tmp_path)


def test_missing_mountpoint_is_runtime_failure(zeo, tmp_path):
    path = tmp_path / 'nonexistent'
    assert_one_line_error(run_wcfs(zeo.zurl, path), 1, str(path))
    assert not path.exists()


def test_mountpoint_that_is_a_file_is_runtime_failure(zeo, tmp_path):
    path = tmp_path / 'file'
    path.write_bytes(b'x')
    assert_one_line_error(run_wcfs(zeo.zurl, path), 1, str(path))
    assert path.read_bytes() == b'x'


def test_mountpoint_of_live_wcfs_is_runtime_failure(zeo, wcfs_mount):
    oid, content = write_bigfile(zeo.db(), sample_data())
    mnt = wcfs_mount(zeo.zurl)
    assert_one_line_error(run_wcfs(zeo.zurl, mnt.path), 1, mnt.path)
    # the first wcfs goes on serving
    assert mnt.proc.poll() is None
    assert read_head(mnt.path, oid) == content


def test_missing_filestorage_is_runtime_failure(tmp_path):
    zurl = 'file:///nonexistent/Data.fs'
    assert_one_line_error(run_wcfs(zurl, tmp_path), 1, zurl)
    assert not is_mounted(tmp_path)


# ---- signals ----

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_unmounts_and_exits_0(zeo, wcfs_mount, sig):
    oid, content = write_bigfile(zeo.db(), sample_data())
    mnt = wcfs_mount(zeo.zurl)
    assert read_head(mnt.path, oid) == content
    mnt.proc.send_signal(sig)
    assert mnt.proc.wait(RUN_TIMEOUT) == 0, mnt.log()
    assert not is_mounted(mnt.path), mnt.log()
    assert 'Traceback' not in mnt.log()


# ---- stale mount ----

def test_stale_mount_is_cleaned_up_on_start(zeo, tmp_path, mount_at):
    oid, content = write_bigfile(zeo.db(), sample_data())
    path = tmp_path / 'mnt'
    path.mkdir()
    first = mount_at(zeo.zurl, path)
    assert read_head(path, oid) == content

    first.proc.kill()
    first.proc.wait(RUN_TIMEOUT)
    assert is_mounted(path)
    with pytest.raises(OSError) as e:
        os.stat(path)
    assert e.value.errno == errno.ENOTCONN

    second = mount_at(zeo.zurl, path)
    assert read_head(path, oid) == content
    with open(path / '.wcfs' / 'zurl') as f:
        assert f.read() == zeo.zurl + '\n'
    assert second.proc.poll() is None


# ---- file:// databases ----

def test_file_zurl_serves_filestorage(tmp_path, wcfs_mount):
    fspath = tmp_path / 'Data.fs'
    oid, content = make_filestorage(fspath, sample_data())
    size = fspath.stat().st_size
    mnt = wcfs_mount('file://%s' % fspath)
    assert read_head(mnt.path, oid) == content
    assert mnt.stop() == 0
    assert fspath.stat().st_size == size        # read-only: nothing appended


def test_file_zurl_serves_python2_filestorage_FS21(tmp_path, wcfs_mount):
    fspath = tmp_path / 'Data.fs'
    oid, content = make_filestorage(fspath, sample_data(), py2str=True)
    with open(fspath, 'r+b') as f:
        assert f.read(4) == b'FS30'
        f.seek(0)
        f.write(b'FS21')
    os.unlink(str(fspath) + '.index')
    mnt = wcfs_mount('file://%s' % fspath)
    assert read_head(mnt.path, oid) == content
    with open(fspath, 'rb') as f:
        assert f.read(4) == b'FS21'


# ---- -o, --debug ----

def test_o_allow_other_reaches_the_mount(zeo, wcfs_mount):
    mnt = wcfs_mount(zeo.zurl, '-o', 'allow_other')
    assert 'allow_other' in mount_options(mnt.path)


def test_debug_logs_fuse_requests(zeo, wcfs_mount):
    oid, content = write_bigfile(zeo.db(), sample_data())
    mnt = wcfs_mount(zeo.zurl, '--debug')
    before = len(mnt.log())
    assert read_head(mnt.path, oid) == content

    def logged_read():
        new = mnt.log()[before:]
        return 'wcfs.fs DEBUG: read /bigfile/%016x/head/data' % oid in new

    wait_for(logged_read, what='the read of head/data in the --debug log')
