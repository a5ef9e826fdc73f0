"""Reading one file as of any snapshot: each block from the BlockCache, which
shares a block between revisions where its records are the same, loaded
through the file's loader where it has none; sequential reads prefetch.
"""

from ..zodb import zformat
from .reply import Reply


class FileReads:
    """The read path of one visible file (FUSE and prefetch threads)."""

    def __init__(self, oid, index, blocks, prefetch, stats, applied):
        self.oid = oid
        self.loader = index.loader
        self.index = index              # which records a block of head is made of
        self.blocks = blocks            # blockcache.BlockCache, shared by every file
        self.prefetch = prefetch        # prefetch.Prefetcher, shared
        self.stats = stats
        self.applied = applied          # -> the last tid the watcher applied

    @property
    def name(self):
        return '%016x' % self.oid


    def read(self, head, offset, size, stream=None, uid=None):
        """Bytes [offset, offset+size) of the file as of `head`, as a Reply;
        `stream`: the prefetch.ReadStream of the open file read through;
        `uid`: who reads (whose turn a load takes, blockcache.py)."""
        if head.broken:
            raise zformat.FormatError(self.oid, head.at, head.broken)
        end = min(offset + size, head.size)
        reply = Reply()
        if offset >= end:
            return reply
        bs = head.blksize
        ahead = None if stream is None else stream.note(offset, end, bs)
        if ahead is not None:
            self.prefetch.ahead(self, head, ahead, uid)
        for blk in range(offset // bs, (end - 1) // bs + 1):
            reply.add(self._block(head, blk, uid), max(offset - blk * bs, 0),
                      min(end - blk * bs, bs))
        stats = self.stats
        stats.add('reads')
        stats.add('bytes_read', end - offset)
        return reply

    def block_key(self, head, blk):
        """What a read asks the BlockCache for block `blk` as of `head` by."""
        return (self.oid, head.at, blk)

    def _block(self, head, blk, uid=None):
        return self.blocks.get(self.block_key(head, blk), head.at, head.blksize,
                                   lambda: self._content_key(head, blk),
                                   lambda cid: self._load_block(head, blk, cid[0]), uid,
                                   lambda parts: self._note_parts(head, blk, parts))

    def fill_ahead(self, head, blk, uid=None):
        """Load block `blk` as of `head` for prefetch (a prefetch thread)."""
        self.blocks.fill(self.block_key(head, blk), head.at, head.blksize,
                             lambda: self._content_key(head, blk),
                             lambda cid: self._load_block(head, blk, cid[0], 'blocks_prefetched'),
                             uid, lambda parts: self._note_parts(head, blk, parts))

    def _content_key(self, head, blk):
        """What fixes the content of block `blk` as of `head` besides the
        span of its records: its ZBlk (looked up in blktab as of head.at)
        and the blksize; None for a hole."""
        zhead = zformat.ZBigFileState(self.oid, head.at, None, head.blksize, head.blktab)
        zblk = self.loader.lookup(zhead, blk)
        return None if zblk is None else (zblk, head.blksize)

    def _load_block(self, head, blk, zblk, counter=None):
        """-> (data, (lo, hi)): block `blk` as of `head` (ZBlk `zblk`), the
        same for every revision in [lo, hi]."""
        # a record without a next revision is current as of the server's
        # answer, so at least as of what the watcher applied before asking
        span = zformat.Span(self.applied())
        data, oids = self.loader.load_block_data(zblk, head.at, head.blksize, span)
        self.stats.add('blocks_loaded')
        if counter is not None:
            self.stats.add(counter)
        return data, (span.lo, span.hi), oids

    def _note_parts(self, head, blk, oids):
        """A block of head, loaded or shared with another revision: the
        watcher must know every record it is made of."""
        if head.at == self.index.at:
            self.index.note_parts(blk, oids)
