"""pqbinary's parameters and placeholders: one query text for libpq and psycopg2."""

import pytest

from wcfs_lib.zodb.zstorage.pqbinary import _LIBPQ, _text, numbered


@pytest.mark.parametrize('sql, want', [
    ('SELECT 1', 'SELECT 1'),
    ('SELECT %s', 'SELECT $1'),
    ('WHERE a = %s AND b = ANY(%s::bigint[]) AND c <= %s',
     'WHERE a = $1 AND b = ANY($2::bigint[]) AND c <= $3'),
    ('%s%s', '$1$2'),
])
def test_placeholders_are_numbered_in_order(sql, want):
    assert numbered(sql) == want


@pytest.mark.parametrize('param, want', [
    (0, b'0'), (-5, b'-5'), (2**63 - 1, b'9223372036854775807'),
    ([], b'{}'), ([1, 2, 3], b'{1,2,3}'), ((7,), b'{7}'),
])
def test_parameters_go_as_postgresql_text(param, want):
    assert _text(param) == want


@pytest.mark.parametrize('param', ['1; DROP TABLE x', ['1}', 2], 1.5, None])
def test_anything_but_integers_is_refused(param):
    with pytest.raises((TypeError, ValueError)):
        _text(param)


@pytest.mark.parametrize('name, found', [
    ('libpq.so.5.15', True),                # Debian's libpq5
    ('libpq-9a3b21c0.so.5.16', True),       # a psycopg2-binary wheel's own
    ('libpqwalreceiver.so', False), ('libpq.a', False), ('libpython3.11.so.1.0', False),
])
def test_psycopg2s_libpq_is_known_by_its_mapped_name(name, found):
    assert bool(_LIBPQ(name)) == found
