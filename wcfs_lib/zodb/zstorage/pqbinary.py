"""wcfs's own record queries in PostgreSQL's binary format, on a psycopg2 connection.

psycopg2 asks for every result as text: a bytea arrives hex-encoded (twice
its size on the wire, encoded by the server and decoded by the client) and
is then copied into a Python bytes. One reader of 2 MiB records
(bench/bench_pg_fetch.py, PostgreSQL 15 on loopback, 2 cores): 213 MiB/s
and 2.3 CPU s/GiB as psycopg2 text; in binary, about 3 times as fast and
a fifth of the CPU whichever way: 609 through COPY ... (FORMAT binary), 653
through psycopg 3 (Debian 12's pure-Python build), 629 through libpq's
binary results here. This way adds no dependency (libpq5 comes with
psycopg2), copies nothing (COPY copies each row into a bytes), and runs on
the PGconn of the very psycopg2 connection that RelStorage polled
(`pgconn_ptr`): the same transaction, the same snapshot, no connection of
its own (psycopg 3 would need its own, and RelStorage has no driver for it).

A query runs in single-row mode: each row is a PGresult of its own, and a
bytea column comes back as a memoryview of that result's buffer, not a
copy: the result is cleared when the last view of it goes. A record that a
block keeps therefore keeps exactly its own row.

    rows = query(conn, 'SELECT tid, state FROM ... WHERE zoid = %s', (zoid,), (INT8, BYTEA))

Parameters are integers or lists of them, in psycopg2's placeholders, so
that the same text runs through psycopg2 where libpq cannot be had (check
says why); columns are decoded by the kinds given (INT8, INT4, BYTEA; NULL
is None). A lost connection raises Disconnected (the
connection is then unusable); an error of the server QueryFailed, and the
transaction is left aborted: the caller starts a new one.
"""

import ctypes
import operator
import os
import re
import struct

INT4, INT8, BYTEA = 'int4', 'int8', 'bytea'

_PGRES_TUPLES_OK = 2
_PGRES_SINGLE_TUPLE = 9
_CONNECTION_OK = 0
_PG_DIAG_SEVERITY = ord('V')    # PG_DIAG_SEVERITY_NONLOCALIZED: never translated
IN_TRANSACTION = 2              # PQtransactionStatus: PQTRANS_INTRANS
_INTS = {INT4: struct.Struct('>i'), INT8: struct.Struct('>q')}
_LIBPQ = re.compile(r'libpq(-[0-9a-f]+)?\.so').match    # Debian's, or a wheel's own


class Unavailable(RuntimeError):
    """libpq cannot be loaded, or the driver gives no PGconn."""


class Disconnected(ConnectionError):
    pass


class QueryFailed(RuntimeError):
    pass


def _libpq_of_psycopg2():
    """-> the path of the libpq that psycopg2 is linked to, as mapped in this
    process (a wheel carries its own: its PGconn is that library's), or None."""
    import psycopg2     # noqa: F401 (mapped with it)
    with open('/proc/self/maps') as maps:
        for line in maps:
            path = line.split(None, 5)[-1].strip()
            if _LIBPQ(os.path.basename(path)):
                return path
    return None


def _libpq():
    """-> psycopg2's libpq with the prototypes used here; Unavailable."""
    path = _libpq_of_psycopg2()
    if path is None:
        raise Unavailable('psycopg2 has no libpq mapped')
    try:
        pq = ctypes.CDLL(path)
    except OSError as e:
        raise Unavailable('%s: %s' % (path, e)) from None
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
            ('PQsendQueryParams', i, [vp, cp, i, vp, ctypes.POINTER(cp), vp, vp, i]),
            ('PQsetSingleRowMode', i, [vp]),
            ('PQgetResult', vp, [vp]),
            ('PQresultStatus', i, [vp]),
            ('PQresultErrorMessage', cp, [vp]),
            ('PQresultErrorField', cp, [vp, i]),
            ('PQerrorMessage', cp, [vp]),
            ('PQstatus', i, [vp]),
            ('PQtransactionStatus', i, [vp]),
            ('PQntuples', i, [vp]),
            ('PQnfields', i, [vp]),
            ('PQgetisnull', i, [vp, i, i]),
            ('PQgetlength', i, [vp, i, i]),
            ('PQgetvalue', vp, [vp, i, i]),
            ('PQclear', None, [vp])):
        f = getattr(pq, fn)
        f.restype, f.argtypes = res, args
    return pq


_pq = None      # libpq, once check() found it


def check(driver):
    """Can queries go through libpq on the connections of RelStorage's
    `driver`? Unavailable saying why not: another driver (or psycopg2 made
    asynchronous by gevent: its calls must not block), a psycopg2 without
    `pgconn_ptr`, no libpq to be found."""
    name = getattr(driver, '__name__', type(driver).__name__)
    if name != 'psycopg2':
        raise Unavailable('the database driver is %s, not psycopg2' % name)
    load()


def load():
    """Make query() usable on psycopg2's connections; Unavailable."""
    global _pq
    import psycopg2.extensions
    if not hasattr(psycopg2.extensions.connection, 'pgconn_ptr'):
        raise Unavailable('psycopg2 %s gives no PGconn (2.8 does)' % psycopg2.__version__)
    if _pq is None:
        _pq = _libpq()


def pgconn(conn):
    """-> the PGconn of the psycopg2 connection `conn`."""
    ptr = conn.pgconn_ptr
    if not ptr:
        raise Disconnected('the connection is closed')
    return ptr


def transaction_status(conn):
    return _pq.PQtransactionStatus(pgconn(conn))


class _Result:
    """Owns one PGresult: cleared when the last view of its values goes."""

    __slots__ = ('ptr', '_clear', '__weakref__')

    def __init__(self, ptr):
        self.ptr = ptr
        self._clear = _pq.PQclear       # at exit too, when module globals may be gone

    def __del__(self):
        self._clear(self.ptr)


def query(conn, sql, params, kinds, max_bytes=None):
    """-> the rows of `sql` run on the psycopg2 connection `conn`, each a
    list decoded by `kinds`. max_bytes: the rows that come once their bytea
    values pass it are dropped as they arrive (the caller can do without:
    a prefetch), so that a query's answer never holds more."""
    pg = pgconn(conn)
    args = (ctypes.c_char_p * max(1, len(params)))(*(_text(p) for p in params))
    if not _pq.PQsendQueryParams(pg, numbered(sql).encode(), len(params), None, args, None,
                                 None, 1):
        raise _failure(pg, None)
    _pq.PQsetSingleRowMode(pg)
    rows, error, held = [], None, 0
    while True:
        ptr = _pq.PQgetResult(pg)
        if not ptr:
            break
        result = _Result(ptr)       # cleared with its last reference, whatever happens
        if error is not None:
            continue                # every result is taken: the connection is free again
        status = _pq.PQresultStatus(ptr)
        if status == _PGRES_SINGLE_TUPLE:
            if max_bytes is not None and held > max_bytes:
                continue
            try:
                row = _row(result, kinds)
            except QueryFailed as e:
                error = e
                continue
            rows.append(row)
            held += sum(len(v) for v in row if isinstance(v, memoryview))
        elif status != _PGRES_TUPLES_OK:
            error = _failure(pg, ptr)
    if error is not None:
        raise error
    return rows


def numbered(sql):
    """psycopg2's placeholders (%s, in order) as libpq's ($1, $2...): one
    text for both (the fallback runs it through psycopg2)."""
    parts = sql.split('%s')
    return ''.join('%s$%d' % (part, n) for n, part in enumerate(parts[:-1], 1)) + parts[-1]


def _text(param):
    """A parameter in PostgreSQL's text format: an int, or a list of them
    (an array)."""
    if isinstance(param, (list, tuple, set, frozenset)):
        return ('{%s}' % ','.join(str(operator.index(p)) for p in param)).encode()
    return str(operator.index(param)).encode()


def _row(result, kinds):
    ptr = result.ptr
    if _pq.PQnfields(ptr) != len(kinds):
        raise QueryFailed('%d columns, want %d' % (_pq.PQnfields(ptr), len(kinds)))
    return [None if _pq.PQgetisnull(ptr, 0, col) else _value(result, col, kind)
            for col, kind in enumerate(kinds)]


def _value(result, col, kind):
    length = _pq.PQgetlength(result.ptr, 0, col)
    address = _pq.PQgetvalue(result.ptr, 0, col)
    if kind == BYTEA:
        buf = (ctypes.c_char * length).from_address(address)
        buf.owner = result          # the view keeps buf, buf keeps the PGresult
        return memoryview(buf).cast('B')
    integer = _INTS[kind]
    if length != integer.size:
        raise QueryFailed('a %s of %d bytes' % (kind, length))
    return integer.unpack(ctypes.string_at(address, length))[0]


def _failure(pg, ptr):
    """-> the exception for a query that failed on connection `pg`."""
    message = _pq.PQresultErrorMessage(ptr) if ptr else b''
    if not message:
        message = _pq.PQerrorMessage(pg) or b'unknown error'
    text = message.decode('utf-8', 'replace').strip()
    severity = _pq.PQresultErrorField(ptr, _PG_DIAG_SEVERITY) if ptr else None
    if _pq.PQstatus(pg) != _CONNECTION_OK or severity in (b'FATAL', b'PANIC'):
        return Disconnected(text)       # a FATAL error ends the session: the server hangs up
    return QueryFailed(text)
