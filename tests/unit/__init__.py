"""The tests that need no mount and no server: decoding, the writer, δ
tables on MappingStorage, the protocol's grammar, quotas, signals, kills."""
