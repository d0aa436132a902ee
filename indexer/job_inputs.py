"""The one rule for the files a re-index job may read: only under the data home's ``uploads/`` and
``downloads/`` folders.

A job row names its input files (``payload["paths"]``). The API writes them under ``uploads/`` and
the fetch stage under ``downloads/``; a row that names anything else (``/etc/passwd``, another
user's home, ``uploads/../catalogue.db``, a link out of the data home) was not written by this
project: it came from a hostile backup or a hand-edited database. :func:`check_job_paths` is
applied when a backup is restored (:mod:`indexer.backup`) and again when a worker starts a job, so
neither path trusts the other.
"""

from __future__ import annotations

from pathlib import Path

INPUT_FOLDERS = ("uploads", "downloads")
MAX_JOB_PATHS = 1000


class UnsafeJobInput(ValueError):
    """A job names a file it may not read; ``str(exc)`` says which rule it broke (without echoing
    more than 200 characters of the path)."""


def input_roots(data_home: Path) -> tuple[Path, ...]:
    """The folders job inputs must lie in (resolved): ``<data_home>/uploads`` and ``<data_home>/downloads``."""
    home = Path(data_home).resolve()
    return tuple(home / name for name in INPUT_FOLDERS)


def check_job_path(raw: object, data_home: Path) -> Path:
    """``raw`` as a resolved path inside ``uploads/`` or ``downloads/`` of ``data_home``.

    Links are followed before the check (a link inside ``uploads/`` that points out is refused).
    Raises :class:`UnsafeJobInput` for anything else: not a string, empty, NUL bytes, relative,
    or outside those folders.
    """
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise UnsafeJobInput(f"a job input must be a non-empty path string, not {str(raw)[:200]!r}")
    path = Path(raw)
    if not path.is_absolute():
        raise UnsafeJobInput(f"a job input must be an absolute path: {raw[:200]!r}")
    resolved = path.resolve()
    for root in input_roots(data_home):
        if resolved != root and resolved.is_relative_to(root):
            return resolved
    raise UnsafeJobInput(
        f"refused job input {raw[:200]!r}: jobs may only read files under the data home's "
        f"{' and '.join(f'{n}/' for n in INPUT_FOLDERS)} folders"
    )


def check_job_paths(paths: object, data_home: Path) -> list[Path]:
    """Every entry of a job's ``paths`` checked by :func:`check_job_path` (a missing list is empty).

    Raises :class:`UnsafeJobInput` when ``paths`` is not a list of at most :data:`MAX_JOB_PATHS`
    entries or when any entry breaks the rule.
    """
    if paths is None:
        return []
    if not isinstance(paths, list) or len(paths) > MAX_JOB_PATHS:
        raise UnsafeJobInput(f"a job's paths must be a list of at most {MAX_JOB_PATHS} paths")
    return [check_job_path(p, data_home) for p in paths]


def first_violation(payload: object, data_home: Path) -> str | None:
    """Why a job ``payload`` breaks the rule (None when it does not): used to neutralise restored jobs."""
    if not isinstance(payload, dict):
        return "the job payload is not an object"
    try:
        check_job_paths(payload.get("paths"), data_home)
    except UnsafeJobInput as exc:
        return str(exc)
    return None

