"""Everything that knows ZODB: decoding records, loading a file's tree and
blocks as of a revision, the storages, revisions of a ZBigFile object."""
