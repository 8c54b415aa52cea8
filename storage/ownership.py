"""Files leadsync makes in a data dir it may not own: root making them for the service
user (`sudo leadsync restore`, `sudo leadsync forget`) gives them the dir's owner."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def owned_like_directory(fd: int, directory: Path) -> None:
    """Root (`sudo leadsync restore`) creating a file in a service user's data dir gives
    it the directory's owner: else the daemon, as that user, could not open it later.
    Not root, nothing changes (the owner cannot, and is the caller already).

    A chown refused by the file system is ignored: NFS with root_squash (root is
    nobody there) and some FUSE mounts answer EPERM or EINVAL, a read-only one EROFS.
    The lock is an flock on the descriptor already open, which works whoever owns the
    file; failing here would only stop root from taking its own lock. The file then
    keeps the owner the file system gave it."""
    if os.geteuid() == 0:
        st = directory.stat()
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError as exc:
            if exc.errno not in _CHOWN_REFUSED:
                raise


_CHOWN_REFUSED = frozenset({errno.EPERM, errno.EINVAL, errno.EROFS})
