"""ZURLs as users see them: wcfs shows its ZURL in `.wcfs/zurl` and its log,
which every user of the mount reads, so a password in it is masked; clients
that look for the wcfs of a database compare ZURLs the same way.

`masked(zurl)` is what wcfs shows (the ZURL as given, passwords as ***).
`key(zurl)` is what a client compares: the ZURL masked, then written one way
for all the spellings of one database that can be told apart from the text
alone. Two ZURLs with one key name the same database (whatever their
passwords); two different keys may still (`localhost` and `127.0.0.1`): a
false "different" only starts one more wcfs, a false "same" would show a
program another database's data, so `key` merges only what is sure.
"""

import re
import urllib.parse

_USERINFO_PASSWORD = re.compile(r'\A([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:)[^@/?#]*@')
_QUERY_PASSWORD = re.compile(r'([?&](?:password|passwd)=)[^&#]*', re.IGNORECASE)

# Ports that a ZURL without one means, whatever the environment: zodburi's
# for zeo://. libpq's for postgres:// is not here: PGPORT changes it.
_DEFAULT_PORT = {'zeo': 9991}
# Options that tune the connection and never choose the database (wcfs reads
# only, whatever read_only says); they are left out of the key.
_TUNING = {
    'zeo': {'read_only', 'read_only_fallback', 'wait', 'wait_timeout',
            'wait_for_server_on_startup', 'cache_size', 'client_label'},
    'postgres': {'read_only', 'connect_timeout', 'cache_local_mb'},
    'file': {'read_only'},
}
_DEFAULT_OPTION = {'zeo': {('storage', '1')}}     # ClientStorage's default storage name
_OPTION_ALIAS = {'postgres': {'ssl_mode': 'sslmode'}}
_PASSWORD_OPTIONS = {'password', 'passwd'}


def masked(zurl):
    """`zurl` with any password in it shown as *** (`.wcfs/zurl` and the log
    are read by every user of the mount)."""
    zurl = _USERINFO_PASSWORD.sub(r'\1***@', zurl)
    return _QUERY_PASSWORD.sub(r'\1***', zurl)


def key(zurl):
    """The form in which two ZURLs are compared, one for both sides: the
    ZURL a program names its database by and the one a mount's
    `.wcfs/zurl` shows (masked already; `key(masked(z)) == key(z)`).

    Masked, without the password at all (its presence does not choose the
    database either); scheme and host in lower case; zeo://'s default port
    left out; an empty path after the host of zeo:// dropped; `//` and `/./`
    in the path of file://, zconfig:// and zeo:///SOCKET collapsed (`..` is
    kept: a symlink decides what it means); query options sorted by name,
    without those that only tune the connection. A ZURL that does not parse
    is its masked text, stripped.
    """
    shown = masked(zurl.strip())
    try:
        u = urllib.parse.urlsplit(shown)
        port = u.port
    except ValueError:
        return shown
    scheme = u.scheme.lower()
    if not scheme or u.fragment:
        return shown
    netloc = _netloc(scheme, u, port) if u.netloc else ''
    path = u.path
    if u.netloc and scheme == 'zeo' and path == '/':
        path = ''
    elif not u.netloc:
        path = _collapsed(path)
    return urllib.parse.urlunsplit((scheme, netloc, path, _query(scheme, u.query), ''))


def same(a, b):
    """Do ZURLs a and b name the same database, as far as `key` can tell?"""
    return key(a) == key(b)


def _netloc(scheme, u, port):
    host = u.hostname or ''
    if ':' in host:
        host = '[%s]' % host        # IPv6
    if port is not None and port != _DEFAULT_PORT.get(scheme):
        host += ':%d' % port
    user = u.netloc.rpartition('@')[0].partition(':')[0] if '@' in u.netloc else ''
    return '%s@%s' % (user, host) if user else host


def _collapsed(path):
    parts = [p for p in path.split('/') if p not in ('', '.')]
    lead = '/' if path.startswith('/') else ''
    return lead + '/'.join(parts)


def _query(scheme, query):
    alias = _OPTION_ALIAS.get(scheme, {})
    options = []
    for item in filter(None, query.split('&')):
        name, eq, value = item.partition('=')
        name = alias.get(name, name)
        if name.lower() in _PASSWORD_OPTIONS or name in _TUNING.get(scheme, ()) \
                or (name, value) in _DEFAULT_OPTION.get(scheme, ()):
            continue
        options.append(name + eq + value)
    return '&'.join(sorted(options, key=lambda o: o.partition('=')[0]))
