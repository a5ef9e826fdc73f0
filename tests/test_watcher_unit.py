"""The watcher without a mount: making a file visible, on a MappingStorage."""

import pytest

from test_delta_table import Database, oid_of
from wcfs_lib import zformat
from wcfs_lib.bigfile import BigFileTable
from wcfs_lib.oidindex import OidIndex
from wcfs_lib.stats import Stats
from wcfs_lib.watcher import Watcher


def test_a_file_whose_load_fails_leaves_nothing_in_the_oid_index():
    """A mkdir whose catch-up fails leaves no entry of the file behind: a user
    repeating it would otherwise grow wcfs by 20 bytes a block each time."""
    db = Database()
    try:
        f = db.new_file()
        for blk in range(4):
            f.write_block(blk, b'block %d' % blk)
        db.root['f'] = f
        at, _ = db.commit()
        oid = oid_of(f)
        zblks = {oid_of(f.blktab[blk]) for blk in range(4)}
        table, oidindex = BigFileTable(), OidIndex()
        watcher = Watcher(db.loader, table, Stats(), oidindex)
        kind, loading = table.start_loading(oid, at)
        assert kind == 'new'
        # a transaction to catch up on that the file cannot follow: as of
        # tid 1 the ZBigFile did not exist
        loading.backlog.append((1, frozenset([oid])))
        with pytest.raises(zformat.ObjectMissing):
            watcher._load(loading, ctx=None)
        assert oidindex.touched(zblks | {oid}) == {}
        assert table.start_loading(oid, at)[0] == 'new'     # the oid is free again
    finally:
        db.close()
