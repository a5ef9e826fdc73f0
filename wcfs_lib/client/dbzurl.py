"""The ZURL of an open ZODB database, for `join(db)`: written the way wcfs
takes it, so that `zurl.key` compares it with what a mount shows and an
autostarted wcfs can open it.

ZEO: `zeo://HOST:PORT` (or `zeo:///SOCKET`), `?storage=NAME` unless the
storage is ClientStorage's default '1'. RelStorage on PostgreSQL:
`postgres://[USER[:PASS]@]HOST[:PORT]/DBNAME[?sslmode=...]` from the libpq
DSN its adapter was made with. Both read attributes that the storages keep
private (ClientStorage's `_addr` and `_storage`, the adapter's `_dsn`); a
version without them is an error naming the attribute, never a guess.
"""

import urllib.parse

from .views import WCFSError


def zurl_of(db):
    """-> the ZURL of ZODB DB `db` (ZEO or RelStorage on PostgreSQL);
    WCFSError naming the storage's class for any other kind."""
    storage = getattr(db, 'storage', None)
    if storage is None:
        raise TypeError('join: want a ZURL (str) or a ZODB.DB, not %s' % _class_name(db))
    kind = _class_name(storage)
    if _is(storage, 'ZEO.ClientStorage', 'ClientStorage'):
        return _zeo_zurl(storage)
    if _is(storage, 'relstorage.storage', 'RelStorage'):
        return _relstorage_zurl(storage)
    raise WCFSError('join: no ZURL for a database of %s (wcfs knows ZEO ClientStorage and '
                    'RelStorage on PostgreSQL)' % kind)


def _class_name(obj):
    cls = type(obj)
    return '%s.%s' % (cls.__module__, cls.__qualname__)


def _is(obj, module, name):
    """Is obj of that class, without importing a package the program does not use?"""
    return any(c.__module__ == module and c.__name__ == name for c in type(obj).__mro__)


def _private(obj, name):
    try:
        return getattr(obj, name)
    except AttributeError:
        raise WCFSError('join: %s has no attribute %s: cannot tell its ZURL (a version of it '
                        'that join does not know)' % (_class_name(obj), name)) from None


def _zeo_zurl(storage):
    addr = _private(storage, '_addr')
    name = str(_private(storage, '_storage'))
    if isinstance(addr, list):
        if len(addr) != 1:
            raise WCFSError('join: ZEO client of several servers %r: wcfs takes one' % (addr,))
        addr = addr[0]
    if isinstance(addr, (str, bytes)):
        zurl = 'zeo://' + _str(addr)
    else:
        host, port = addr
        zurl = 'zeo://%s:%d' % (_host(host), port)
    return zurl if name == '1' else zurl + '?storage=' + urllib.parse.quote(name, safe='')


def _relstorage_zurl(storage):
    adapter = _private(storage, '_adapter')
    if not _class_name(adapter).startswith('relstorage.adapters.postgresql.'):
        raise WCFSError('join: RelStorage with %s: wcfs takes RelStorage on PostgreSQL only'
                        % _class_name(adapter))
    dsn = _parse_dsn(_private(adapter, '_dsn'))
    host = dsn.get('host', '')
    if not host or host.startswith('/') or ',' in host:
        raise WCFSError('join: RelStorage on PostgreSQL at host %r: wcfs takes one TCP host '
                        '(postgres://HOST[:PORT]/DB)' % host)
    userinfo = ''
    if 'user' in dsn:
        userinfo = _quoted(dsn['user'])
        if 'password' in dsn:
            userinfo += ':' + _quoted(dsn['password'])
        userinfo += '@'
    port = ':' + dsn['port'] if 'port' in dsn else ''
    query = '?sslmode=' + _quoted(dsn['sslmode']) if 'sslmode' in dsn else ''
    return 'postgres://%s%s%s/%s%s' % (userinfo, _host(host), port, _quoted(dsn.get('dbname', '')),
                                        query)


def _parse_dsn(dsn):
    """libpq's own reading of a DSN (key=value or URI), by the driver RelStorage uses."""
    try:
        from psycopg2.extensions import parse_dsn
    except ImportError:
        from psycopg.conninfo import conninfo_to_dict as parse_dsn
    try:
        return parse_dsn(dsn)
    except Exception as e:      # its message may quote the password: not shown
        raise WCFSError('join: the DSN of the RelStorage cannot be read (%s)'
                        % type(e).__name__) from None


def _host(host):
    return '[%s]' % host if ':' in host else host


def _quoted(text):
    return urllib.parse.quote(text, safe='')


def _str(addr):
    return addr.decode() if isinstance(addr, bytes) else addr
