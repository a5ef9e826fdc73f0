"""`.wcfs/zurl` and the log never show a password of the ZURL (SPEC §3):
every user of the mount can read them."""

import os

import pytest

from wcfs_lib import zstorage


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
    assert zstorage.masked(zurl) == shown


def test_zurl_file_shows_no_password(zeo, wcfs_mount):
    host, port = zeo.addr
    mnt = wcfs_mount('zeo://wcfs:hunter2@%s:%d' % (host, port))
    with open(os.path.join(mnt.path, '.wcfs', 'zurl')) as f:
        assert f.read() == 'zeo://wcfs:***@%s:%d\n' % (host, port)
    mnt.stop()
    assert 'hunter2' not in mnt.log()
