"""ZURLs as users see them: wcfs shows its ZURL in `.wcfs/zurl` and its log,
which every user of the mount reads, so a password in it is masked; clients
that look for the wcfs of a database compare ZURLs the same way."""

import re

_USERINFO_PASSWORD = re.compile(r'\A([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:)[^@/?#]*@')
_QUERY_PASSWORD = re.compile(r'([?&](?:password|passwd)=)[^&#]*', re.IGNORECASE)


def masked(zurl):
    """`zurl` with any password in it shown as *** (`.wcfs/zurl` and the log
    are read by every user of the mount)."""
    zurl = _USERINFO_PASSWORD.sub(r'\1***@', zurl)
    return _QUERY_PASSWORD.sub(r'\1***', zurl)
