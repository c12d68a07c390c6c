"""Local temporary space for one job: is there room for the download and its output?

A job needs about twice the upload on disk (the download and the stamped copy; a deflated zip
member is expanded one at a time next to them). Checked before the download starts, so a file that
cannot fit fails once with a code instead of filling the disk, failing with ENOSPC and starving
the other jobs of the task on every redelivery.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

from service.errors import PermanentError, RetryableError, Stage

# Besides the two copies: temp members, zip directories, the file system's own reserve.
_MARGIN = 64 * 1024**2


class DiskSpace(NamedTuple):
    """Total and free bytes of one file system (``shutil.disk_usage`` answers more)."""

    total: int
    free: int


def disk_space(path: Path) -> DiskSpace:
    """The file system holding ``path``."""
    usage = shutil.disk_usage(path)
    return DiskSpace(usage.total, usage.free)


def bytes_needed(size: int) -> int:
    """What a job for an upload of ``size`` bytes needs in ``WORK_DIR``."""
    return 2 * size + _MARGIN


def check_room(size: int, space: DiskSpace) -> None:
    """Raise ``PermanentError`` ERRL2004 when the job can never fit the file system, and
    ``RetryableError`` ERRL2005 when it cannot fit now (other jobs hold the space: later)."""
    needed = bytes_needed(size)
    if needed > space.total:
        raise PermanentError(
            "ERRL2004",
            f"a {size}-byte upload needs about {needed} bytes of WORK_DIR, which holds {space.total}",
            Stage.DOWNLOAD,
        )
    if needed > space.free:
        raise RetryableError(
            "ERRL2005", f"WORK_DIR has {space.free} bytes free; the job needs about {needed}", Stage.DOWNLOAD
        )
