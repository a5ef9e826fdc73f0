"""zurl.key: the one form in which a client compares the ZURL it was given
with what a mount's `.wcfs/zurl` shows (client.join). Spellings of one
database meet; different databases never do."""

import pytest

from wcfs_lib import zurl

SAME = [
    ('zeo://127.0.0.1:9100', 'zeo://127.0.0.1:9100'),
    ('ZEO://DB.Example:9100', 'zeo://db.example:9100'),
    ('zeo://db:9991', 'zeo://db'),
    ('zeo://db:9100/', 'zeo://db:9100'),
    ('zeo://db:9100?storage=1', 'zeo://db:9100'),
    ('zeo://db:9100?storage=main&cache_size=1000', 'zeo://db:9100?storage=main'),
    ('zeo://db:9100?read_only=1&wait_timeout=5', 'zeo://db:9100'),
    ('zeo://u:secret@db:9100', 'zeo://u:***@db:9100'),
    ('zeo://u:secret@db:9100', 'zeo://u:other@db:9100'),
    ('zeo://u:secret@db:9100', 'zeo://u@db:9100'),
    ('zeo://[::1]:9100', 'zeo://[::1]:9100/'),
    ('zeo:///run/zeo//sock', 'zeo:///run/zeo/./sock'),
    ('postgres://wcfs:pw@DB:5432/zodb', 'postgres://wcfs:***@db:5432/zodb'),
    ('postgres://wcfs:pw@db:5432/zodb?sslmode=require&keep_history=true',
     'postgres://wcfs@db:5432/zodb?keep_history=true&ssl_mode=require'),
    ('postgres://wcfs@db:5432/zodb?connect_timeout=5&cache_local_mb=0', 'postgres://wcfs@db:5432/zodb'),
    ('postgres://db:5432/zodb?user=w&password=secret', 'postgres://db:5432/zodb?user=w'),
    ('file:///srv//zodb/./Data.fs', 'file:///srv/zodb/Data.fs'),
    ('file:///srv/zodb/Data.fs?read_only=1', 'file:///srv/zodb/Data.fs'),
    ('zconfig:///etc/wcfs/zodb.conf', 'zconfig:///etc/wcfs//zodb.conf'),
    (' zeo://db:9100\n', 'zeo://db:9100'),
]

DIFFERENT = [
    ('zeo://db:9100', 'zeo://db:9101'),
    ('zeo://db1:9100', 'zeo://db2:9100'),
    ('zeo://db:9100', 'zeo://db:9100?storage=2'),
    ('zeo://db:9100?storage=a', 'zeo://db:9100?storage=A'),
    ('zeo://u@db:9100', 'zeo://v@db:9100'),
    ('zeo://u@db:9100', 'zeo://U@db:9100'),
    ('zeo://db', 'file:///db'),
    ('postgres://wcfs@db/zodb', 'postgres://wcfs@db:5432/zodb'),    # PGPORT may say otherwise
    ('postgres://wcfs@db:5432/zodb', 'postgres://wcfs@db:5432/ZODB'),
    ('postgres://wcfs@db:5432/zodb', 'postgres://wcfs@db:5432/zodb/'),
    ('postgres://wcfs@db:5432/zodb', 'postgres://wcfs@db:5432/zodb?keep_history=false'),
    ('postgres://wcfs@db:5432/zodb', 'postgres://other@db:5432/zodb'),
    ('file:///srv/zodb/Data.fs', 'file:///srv/zodb/data.fs'),
    ('file:///srv/a/../zodb/Data.fs', 'file:///srv/zodb/Data.fs'),  # a may be a symlink
    ('zconfig:///etc/a.conf', 'zconfig:///etc/b.conf'),
    ('postgres://db:port/zodb', 'postgres://db/zodb'),
]


@pytest.mark.parametrize('a, b', SAME)
def test_spellings_of_one_database_have_one_key(a, b):
    assert zurl.key(a) == zurl.key(b)
    assert zurl.same(a, b)


@pytest.mark.parametrize('a, b', DIFFERENT)
def test_different_databases_have_different_keys(a, b):
    assert zurl.key(a) != zurl.key(b)
    assert not zurl.same(a, b)


@pytest.mark.parametrize('a, _', SAME + DIFFERENT)
def test_key_of_what_wcfs_shows_is_the_key_of_what_it_was_given(a, _):
    assert zurl.key(zurl.masked(a) + '\n') == zurl.key(a)


@pytest.mark.parametrize('given', [
    'zeo://u:secret@db:9100', 'postgres://wcfs:s3cr:et@db:5432/zodb',
    'postgres://db:5432/zodb?user=w&password=secret', 'zeo://db:9100?passwd=secret&x=1',
])
def test_key_holds_no_password(given):
    assert 'secret' not in zurl.key(given) and 's3cr' not in zurl.key(given)
    assert '***' not in zurl.key(given)


def test_unparsable_zurl_is_its_masked_text():
    assert zurl.key('postgres://u:pw@db:port/zodb ') == 'postgres://u:***@db:port/zodb'
    assert zurl.key('not a zurl') == 'not a zurl'


def test_masked_is_unchanged_by_key():
    """What wcfs writes in .wcfs/zurl stays the ZURL as given (SPEC §3)."""
    assert zurl.masked('ZEO://u:pw@DB:9991/?storage=1') == 'ZEO://u:***@DB:9991/?storage=1'
