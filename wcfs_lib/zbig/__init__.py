"""wendelin.core's persistent classes in its exact format, without wendelin.core.

For programs and tests that write or load ZBigFiles and ZBigArrays where
wendelin.core cannot be installed (shared/ZBIGFILE.md has the format):

    from wcfs_lib import zbig
    z = zbig.install()                  # once, before the first load or commit
    root['A'] = a = z.ZBigArray((10, 3), 'int64')
    a[2:4] = 7
    a.append(numpy.ones((5, 3)))
    transaction.commit()

Importing zbig does nothing to other modules. install() does it, once, and
explicitly: ZODB pickles an object by its class's module and name, importing
that module both to write (the pickler checks the class is the module's) and
to load (ZODB's default class factory). So install() makes
wendelin.bigfile.file_zodb and wendelin.bigarray.array_zodb importable:

- where a wendelin package is importable (wendelin.core itself), it imports
  wendelin.core's modules and replaces nothing;
- elsewhere it puts modules of those names in sys.modules, holding zbig's
  classes.

It returns an Installed: the classes in effect (ZBigFile, ZBigArray, ZBlk0,
ZBlk1, ZData, ZBlk) and real, whether they are wendelin.core's. A program
that makes its objects with z.ZBigArray works either way for what both have:
shape, dtype, basic indexing, append, resize (wendelin.core's arrays also
want their first commit before the first access). Where real is true, store
only those classes: one of zbig's would not pickle, as the module holds
another class of its name. Later calls return the same Installed. ZODB's
own classes are never patched.

The classes, pickled under wendelin.core's module and class names, with its
persistent states:

ZBigFile    (blksize, blktab): blktab a LOBTree {blk: ZBlk0 | ZBlk1}; blocks
            missing are holes (zeros). write_block(blk, data, kind), write(),
            truncate(), ... in blocks of the caller's kind.
ZBlk0       the block's bytes, trailing zeros stripped. ZBlk is its old name,
            for the records of old databases.
ZBlk1       an IOBTree {offset in block: ZData} of the chunks not all zero.
ZData       one chunk's bytes, trailing zeros stripped.
ZBigArray   ({'_dtype', '_shape', '_order', '_stridev'}, {'zfile': ZBigFile}):
            shape, dtype, order 'C' or 'F', the image of the array at offset 0
            of zfile in blocks of blksize (2 MiB by default); a[idx] = values
            (basic indexing), append(), resize(); a[idx] and numpy.asarray(a)
            read copies.

Modules: blocks (the ZBlks and ZData), file (ZBigFile), array (ZBigArray),
index (which bytes a numpy index covers), install.
"""

from .array import BLKSIZE, ZBigArray
from .blocks import KINDS, ZBlk, ZBlk0, ZBlk1, ZData
from .file import ZBigFile
from .install import Installed, install

__all__ = ['install', 'Installed', 'ZBigFile', 'ZBigArray', 'ZBlk0', 'ZBlk1', 'ZData', 'ZBlk',
           'KINDS', 'BLKSIZE']
