"""The directory prometheus_client's multiprocess mode keeps every process's metric
files in: made by the master before the first fork, named after the master's PID
(``qpxd-metrics-<pid>-*``), so the directories of masters killed without cleaning up
(``kill -9``) are recognised and removed at the next start.

This module must not import prometheus_client: the library picks its storage when it is
first imported, so ``PROMETHEUS_MULTIPROC_DIR`` has to be set before that.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from . import log

PREFIX = "qpxd-metrics-"


def make_dir() -> str:
    """Remove stale directories, make this master's and export it in the environment
    (workers inherit it)."""
    tmp = tempfile.gettempdir()
    remove_stale_dirs(tmp)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def remove_stale_dirs(tmp: str) -> None:
    """Metrics directories of masters that died without cleaning up (``kill -9``): named
    ``qpxd-metrics-<pid>-*``, removed when that process no longer exists."""
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if not name.startswith(PREFIX) or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue  # that master still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        path = os.path.join(tmp, name)
        shutil.rmtree(path, ignore_errors=True)
        log.log(20, "removed stale metrics directory", path=path)
