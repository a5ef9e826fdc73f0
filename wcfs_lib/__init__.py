"""wcfs: ZBigFiles of a ZODB database served as files over FUSE."""
