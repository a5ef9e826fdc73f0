"""The service: starting, serving and stopping wcfs; the one list of its
locks and waits (server.py); detaching; per-uid quotas; counters."""
