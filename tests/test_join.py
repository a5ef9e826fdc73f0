"""client.join: the wcfs of a database on this machine, found by ZURL (or a
ZODB.DB) among the fuse.wcfs mounts of root and of the caller, or started
(issue 17, item 2).

Every wcfs, fake filesystem and child process started here is ended by its
pid, and every mount undone, at teardown: autostarted wcfs are found by the
pid files under the test's own XDG_RUNTIME_DIR, and by their command lines,
which name that directory.
"""

import importlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ZODB
import ZODB.MappingStorage
from psycopg2.extensions import parse_dsn

from daemonhelp import read_pid
from devtools.procs import is_mounted, read_text, wait_for
from devtools.wcfsproc import ROOT
from joinhelp import (FakeWCFS, Joiner, end_autostarted, mount_of, processes_naming,
                      why_nobody_cannot_run_wcfs)
from wcfs_lib import client, procfs, zurl
from wcfs_lib.client.dbzurl import zurl_of
from wcfs_lib.zodb.zstorage import postgres as zstorage_postgres
from zhelp import NOBODY, SETPRIV_NOBODY

# the module; wcfs_lib.client.join is the function
joining = importlib.import_module('wcfs_lib.client.join')

pytestmark = pytest.mark.timeout(120)


# ---- finding a mount ----

def test_join_finds_the_wcfs_of_its_database_among_two(zeo, zeo2, wcfs_mount):
    mnt1, mnt2 = wcfs_mount(zeo.zurl), wcfs_mount(zeo2.zurl)
    with client.join(zeo.zurl) as wc:
        assert wc.mountpoint == mnt1.path
    with client.join(zeo2.zurl) as wc:
        assert wc.mountpoint == mnt2.path
    host, port = zeo2.addr
    with client.join('ZEO://%s:%d/?storage=1&wait_timeout=3' % (host.upper(), port)) as wc:
        assert wc.mountpoint == mnt2.path


def test_join_finds_a_mount_whose_zurl_has_a_password(zeo, wcfs_mount):
    host, port = zeo.addr
    mnt = wcfs_mount('zeo://wcfs:hunter2@%s:%d' % (host, port))
    with client.join('zeo://wcfs:other@%s:%d' % (host, port)) as wc:
        assert wc.mountpoint == mnt.path


def test_join_without_a_wcfs_is_an_error_naming_the_zurl_masked(zeo, wcfs_mount):
    wcfs_mount(zeo.zurl)
    host, port = zeo.addr
    asked = 'zeo://wcfs:hunter2@%s:%d?storage=2' % (host, port)
    with pytest.raises(client.WCFSError) as e:
        client.join(asked)
    message = str(e.value)
    assert message.startswith(zurl.masked(asked) + ': no wcfs serves this database'), message
    assert 'hunter2' not in message and '\n' not in message


def test_join_does_not_read_a_wcfs_mount_that_another_mount_hides(zeo, wcfs_mount, tmp_path):
    """Its path leads into the mount on top: what is read there is not that wcfs's."""
    mnt = wcfs_mount(zeo.zurl)
    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', mnt.path], check=True, timeout=30)
    try:
        os.mkdir(os.path.join(mnt.path, '.wcfs'))
        with open(os.path.join(mnt.path, '.wcfs', 'zurl'), 'w') as f:
            f.write(zeo.zurl + '\n')
        with pytest.raises(client.WCFSError, match='no wcfs serves'):
            client.join(zeo.zurl)
    finally:
        subprocess.run(['umount', '-l', mnt.path], check=True, timeout=30)
    with client.join(zeo.zurl) as wc:
        assert wc.mountpoint == mnt.path


def test_join_of_a_zeo_db_finds_its_wcfs(zeo, zeo2, wcfs_mount):
    wcfs_mount(zeo.zurl)
    mnt2 = wcfs_mount(zeo2.zurl)
    db = zeo2.new_db()
    try:
        assert zurl_of(db) == zeo2.zurl
        with client.join(db) as wc:
            assert wc.mountpoint == mnt2.path
    finally:
        db.close()


def test_join_of_a_postgres_db_finds_its_wcfs(postgres, zeo, wcfs_mount):
    wcfs_mount(zeo.zurl)
    mnt = wcfs_mount(postgres.zurl)
    db = ZODB.DB(postgres.cluster.storage(postgres.dbname))
    try:
        assert zurl.same(zurl_of(db), postgres.zurl), (zurl_of(db), postgres.shown_zurl)
        dsn, _ = zstorage_postgres.parse(zurl_of(db))      # what an autostarted wcfs connects to
        assert parse_dsn(dsn) == parse_dsn(postgres.cluster.dsn(postgres.dbname))
        with client.join(db) as wc:
            assert wc.mountpoint == mnt.path
    finally:
        db.close()


def test_join_of_a_db_of_another_kind_names_its_storage():
    db = ZODB.DB(ZODB.MappingStorage.MappingStorage())
    try:
        with pytest.raises(client.WCFSError, match='MappingStorage'):
            client.join(db, autostart=True)
    finally:
        db.close()


# ---- a mount of another user ----


@pytest.fixture
def fake_wcfs(tmp_path, public_dir):
    """make(zurl, readable=True) -> a FakeWCFS, ended at teardown."""
    made = []

    def make(zurl, readable=True):
        parent = tmp_path if readable else public_dir   # nobody must reach its mount point
        fake = FakeWCFS(parent / ('fake%d' % len(made)), zurl, tmp_path / 'fake.log', readable)
        made.append(fake)
        return fake

    try:
        yield make
    finally:
        for fake in made:
            fake.close()
        print('--- fake wcfs log:\n%s' % read_text(tmp_path / 'fake.log'))


def test_join_skips_the_fuse_wcfs_mount_of_another_user(zeo, fake_wcfs, runtime):
    fake = fake_wcfs(zeo.zurl)
    entry = mount_of(fake.path)
    assert (entry.fstype, entry.super_options['user_id']) == ('fuse.wcfs', str(NOBODY.pw_uid))
    assert zurl.same(read_text(os.path.join(fake.path, '.wcfs', 'zurl')), zeo.zurl)
    assert_skipped(zeo.zurl, fake)


def test_join_skips_the_fuse_wcfs_mount_of_another_user_that_only_it_may_enter(
        zeo, fuse_for_all, fake_wcfs, runtime):
    fake = fake_wcfs(zeo.zurl, readable=False)
    assert mount_of(fake.path).super_options['user_id'] == str(NOBODY.pw_uid)
    with pytest.raises(PermissionError):
        os.stat(os.path.join(fake.path, '.wcfs'))
    assert_skipped(zeo.zurl, fake)


def assert_skipped(zurl_, fake):
    with pytest.raises(client.WCFSError) as e:
        client.join(zurl_)
    message = str(e.value)
    assert 'no wcfs serves' in message, message
    assert 'skipped fuse.wcfs mounts of other users' in message, message
    assert '%s (uid %d)' % (fake.path, NOBODY.pw_uid) in message, message


def test_autostart_beside_a_fake_wcfs_of_another_user_starts_a_real_one(zeo, fake_wcfs, runtime):
    fake = fake_wcfs(zeo.zurl)
    with client.join(zeo.zurl, autostart=True) as wc:
        assert wc.mountpoint != fake.path
        assert wc.mountpoint == os.path.join(joining.state_dir(zeo.zurl), 'mnt')
        assert mount_of(wc.mountpoint).super_options['user_id'] == '0'
        assert os.path.isdir(os.path.join(wc.mountpoint, 'bigfile'))


# ---- autostart ----

def test_autostart_joins_a_wcfs_that_serves_already_and_starts_none(zeo, wcfs_mount, runtime):
    mnt = wcfs_mount(zeo.zurl)
    with client.join(zeo.zurl, autostart=True) as wc:
        assert wc.mountpoint == mnt.path
    assert processes_naming(str(runtime)) == []
    assert not (runtime / 'wcfs').exists()


def test_autostart_from_two_processes_at_once_gives_one_wcfs(zeo, runtime):
    home = joining.state_dir(zeo.zurl)
    mnt = os.path.join(home, 'mnt')
    with Joiner(zeo.zurl) as a, Joiner(zeo.zurl) as b:
        a.go()
        b.go()
        answers = {a.answer(), b.answer()}
        assert answers == {'joined ' + mnt}, answers
        wcfs = [pid for pid in processes_naming(mnt)]
        assert wcfs == [read_pid(Path(home) / 'wcfs.pid')], wcfs
        assert is_mounted(mnt)
        with open(os.path.join(mnt, '.wcfs', 'zurl')) as f:
            assert f.read() == zeo.shown_zurl + '\n'
        with client.join(zeo.zurl, autostart=True) as wc:
            assert wc.mountpoint == mnt
        assert processes_naming(mnt) == wcfs


@pytest.mark.parametrize('bad, why', [
    ('file:///no/such/dir/Data.fs', 'exit 1'),
    ('postgres://wcfs:hunter2@127.0.0.1/zodb?create_schema=true', 'exit 2'),
])
def test_autostart_with_a_bad_zurl_fails_and_leaves_nothing(runtime, bad, why):
    with pytest.raises(client.WCFSError) as e:
        client.join(bad, autostart=True)
    message = str(e.value)
    assert message.startswith(zurl.masked(bad) + ': wcfs failed to start (%s): ' % why), message
    assert 'hunter2' not in message and '\n' not in message
    home = joining.state_dir(bad)
    assert not is_mounted(os.path.join(home, 'mnt'))
    assert processes_naming(str(runtime)) == []
    pid = read_pid(Path(home) / 'wcfs.pid')
    assert pid is None or procfs.process_state(pid) in (None, 'Z'), pid


def test_autostart_after_its_wcfs_was_killed_starts_another(zeo, runtime):
    home = Path(joining.state_dir(zeo.zurl))
    with client.join(zeo.zurl, autostart=True) as wc:
        assert wc.mountpoint == str(home / 'mnt')
    killed = read_pid(home / 'wcfs.pid')
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: procfs.process_state(killed) in (None, 'Z'), 10, 'wcfs %d to die' % killed)
    with pytest.raises(client.WCFSError, match='no wcfs serves'):
        client.join(zeo.zurl)       # the dead mount is still there: not a wcfs that serves
    with client.join(zeo.zurl, autostart=True) as wc:
        assert wc.mountpoint == str(home / 'mnt')
        assert read_pid(home / 'wcfs.pid') not in (None, killed)
        with open(home / 'mnt' / '.wcfs' / 'zurl') as f:
            assert f.read() == zeo.shown_zurl + '\n'


@pytest.fixture
def nobody_runtime(public_dir, fuse_for_all):
    """An XDG_RUNTIME_DIR of nobody's (0700), for a join run as nobody; what
    autostart started under it is ended, unmounted and removed at teardown."""
    why = why_nobody_cannot_run_wcfs()
    if why:
        pytest.skip('nobody cannot run %s with %s: %s' % (ROOT / 'wcfs.py', sys.executable, why))
    path = public_dir / 'run'
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        yield path
    finally:
        end_autostarted(path)
        if not any(is_mounted(home / 'mnt') for home in (path / 'wcfs').glob('*')):
            shutil.rmtree(path)


def test_autostart_as_another_user_gives_a_wcfs_of_that_user(zeo, nobody_runtime):
    with Joiner(zeo.zurl, SETPRIV_NOBODY, nobody_runtime) as a:
        a.go()
        answer = a.answer()
        assert answer.startswith('joined %s/wcfs/' % nobody_runtime), answer
        mnt = answer.split(' ', 1)[1]
        assert mount_of(mnt).super_options['user_id'] == str(NOBODY.pw_uid)
        wcfs = processes_naming(mnt)
        assert wcfs == [read_pid(Path(mnt).parent / 'wcfs.pid')], wcfs
        assert os.stat('/proc/%d' % wcfs[0]).st_uid == NOBODY.pw_uid
        with Joiner(zeo.zurl, SETPRIV_NOBODY, nobody_runtime) as b:
            b.go()
            assert b.answer() == answer
        assert processes_naming(mnt) == wcfs
        with pytest.raises(client.WCFSError, match='skipped fuse.wcfs mounts of other users'):
            client.join(zeo.zurl)       # root's join: nobody's wcfs is not root's


def test_autostart_of_a_postgres_db_serves_it(postgres, runtime):
    db = ZODB.DB(postgres.cluster.storage(postgres.dbname))
    try:
        with client.join(db, autostart=True) as wc:
            assert wc.mountpoint == os.path.join(joining.state_dir(postgres.zurl), 'mnt')
            assert wc.zurl == zurl.masked(zurl_of(db))
            assert '***' in wc.zurl and postgres.cluster.password not in wc.zurl
    finally:
        db.close()
