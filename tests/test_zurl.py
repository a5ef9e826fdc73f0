"""`.wcfs/zurl` and the log never show a password of the ZURL (SPEC §3):
every user of the mount can read them."""

import os

import pytest

from wcfs_lib.zodb import zstorage
from wcfs_lib.zurl import masked


@pytest.mark.parametrize('zurl, shown', [
    ('zeo://127.0.0.1:9100', 'zeo://127.0.0.1:9100'),
    ('file:///srv/zodb/Data.fs', 'file:///srv/zodb/Data.fs'),
    ('zeo://wcfs:secret@127.0.0.1:9100', 'zeo://wcfs:***@127.0.0.1:9100'),
    ('postgres://wcfs:s3cr:et@db.example:5432/zodb', 'postgres://wcfs:***@db.example:5432/zodb'),
    ('postgres://wcfs:@db:5432/zodb', 'postgres://wcfs:***@db:5432/zodb'),
    ('postgres://wcfs@db:5432/zodb', 'postgres://wcfs@db:5432/zodb'),
    ('postgres://db:5432/zodb?user=wcfs&password=secret&x=1',
     'postgres://db:5432/zodb?user=wcfs&password=***&x=1'),
    ('zconfig:///etc/wcfs/zodb.conf', 'zconfig:///etc/wcfs/zodb.conf'),
    ('file:///data/a:b@c/Data.fs', 'file:///data/a:b@c/Data.fs'),
])
def test_password_is_masked(zurl, shown):
    assert masked(zurl) == shown


def test_zurl_file_shows_no_password(zeo, wcfs_mount):
    host, port = zeo.addr
    mnt = wcfs_mount('zeo://wcfs:hunter2@%s:%d' % (host, port))
    with open(os.path.join(mnt.path, '.wcfs', 'zurl')) as f:
        assert f.read() == 'zeo://wcfs:***@%s:%d\n' % (host, port)
    mnt.stop()
    assert 'hunter2' not in mnt.log()


# ---- postgres:// is opened by wcfs itself: read-only, no DDL ----

from wcfs_lib.zodb.zstorage import postgres  # noqa: E402


@pytest.mark.parametrize('zurl, dsn, options', [
    ('postgres://wcfs:pw@db:5432/zodb', "dbname='zodb' host='db' port='5432' user='wcfs' password='pw'", {}),
    ('postgres://db/zodb', "dbname='zodb' host='db'", {}),     # no password='None': ~/.pgpass works
    ('postgres://w%40x:p%27q@db/zo%20db?keep_history=false&connect_timeout=5',
     "dbname='zo db' host='db' user='w@x' password='p\\'q' connect_timeout='5'", {'keep_history': False}),
    ('postgres://db/zodb?read_only=0&sslmode=require', "dbname='zodb' host='db' sslmode='require'", {}),
])
def test_postgres_zurl_gives_the_dsn_and_options(zurl, dsn, options):
    assert postgres.parse(zurl) == (dsn, options)


@pytest.mark.parametrize('zurl', [
    'postgres://db', 'postgres://db/', 'postgres:///zodb', 'postgres://db:port/zodb',
    'postgres://db/zodb?create_schema=true', 'postgres://db/zodb?keep_history=maybe',
    'postgres://db/zodb#x',
])
def test_bad_postgres_zurl_is_a_usage_error(zurl):
    with pytest.raises(zstorage.UsageError, match='invalid ZURL'):
        zstorage.resolve(zurl)
