"""A package (as tests/unit/ is), so that a test module here and one in
unit/ may share a name: tests.test_protocol and tests.unit.test_protocol.
Helper modules (zhelp, scenes, ...) are imported by their own names:
pytest.ini puts this directory on sys.path."""
