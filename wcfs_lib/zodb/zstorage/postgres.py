"""Opening RelStorage on PostgreSQL from a `postgres://` ZURL, for reading only.

RelStorage's own zodburi resolver opens the database so that it may write
and prepares the schema on every open: it runs DDL, and reinstalls the
stored procedures when their checksums differ from its version's, so a
wcfs of another RelStorage version could rewrite a shared database. It also
sends the password 'None' when the ZURL has none, which defeats ~/.pgpass.
wcfs opens it itself: read-only, `create_schema` off (a role that may only
SELECT works), and only the parts of the DSN the ZURL gives.

    postgres://[USER[:PASS]@]HOST[:PORT]/DBNAME[?OPTION=VALUE&...]

OPTION: keep_history, connect_timeout, sslmode (PostgreSQL's; ssl_mode is
taken too), cache_local_mb. Anything else is a usage error.
"""

import math
import urllib.parse

_BOOL = {'1': True, 'true': True, 'yes': True, 'on': True,
         '0': False, 'false': False, 'no': False, 'off': False}
_DSN_OPTIONS = {'connect_timeout': 'connect_timeout', 'sslmode': 'sslmode',
                'ssl_mode': 'sslmode'}


class BadZURL(ValueError):
    pass


def factory(zurl, db_timeout=30):
    """-> a function that opens the RelStorage of `zurl`; BadZURL when it
    cannot be parsed. A connection attempt gives up after `db_timeout`
    (libpq waits for ever by default, e.g. for a host that drops packets),
    unless the ZURL says otherwise."""
    dsn, options = parse(zurl)
    if 'connect_timeout=' not in dsn:
        dsn += " connect_timeout='%d'" % max(2, math.ceil(db_timeout))

    def open_storage():
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage
        opts = Options(read_only=True, create_schema=False, **options)
        return RelStorage(adapter=PostgreSQLAdapter(dsn=dsn, options=opts), options=opts)
    return open_storage


def parse(zurl):
    """-> (libpq DSN, RelStorage options) of a postgres:// ZURL."""
    try:
        u = urllib.parse.urlsplit(zurl)
        port = u.port
    except ValueError as e:
        raise BadZURL(str(e)) from None
    if u.scheme != 'postgres' or not u.hostname or u.path in ('', '/') or u.fragment:
        raise BadZURL('want postgres://[USER[:PASS]@]HOST[:PORT]/DBNAME')
    dsn = {'dbname': urllib.parse.unquote(u.path[1:]), 'host': u.hostname}
    if port is not None:
        dsn['port'] = str(port)
    if u.username:
        dsn['user'] = urllib.parse.unquote(u.username)
    if u.password is not None:
        dsn['password'] = urllib.parse.unquote(u.password)
    options = {}
    for key, value in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
        if key in _DSN_OPTIONS:
            dsn[_DSN_OPTIONS[key]] = value
        elif key == 'keep_history':
            if value.lower() not in _BOOL:
                raise BadZURL('keep_history=%s: want true or false' % value)
            options['keep_history'] = _BOOL[value.lower()]
        elif key == 'cache_local_mb':
            if not value.isdigit():
                raise BadZURL('cache_local_mb=%s: want a number' % value)
            options['cache_local_mb'] = int(value)
        elif key != 'read_only':       # wcfs reads only, whatever it says
            raise BadZURL('unknown option %r' % key)
    return ' '.join('%s=%s' % (k, _quoted(v)) for k, v in dsn.items()), options


def _quoted(value):
    """A libpq connection-string value: quoted, with ' and \\ escaped."""
    return "'%s'" % value.replace('\\', '\\\\').replace("'", "\\'")
