"""What the API shows of server-side text: no absolute paths, no host names or process ids.

Error messages come from many layers (archive checks, image decoding, the ingester, a stage's
exception) and some of them name files by their absolute path; job rows record which worker
(``host:pid:nonce``) holds them. Both are useful in the service log and the database, and both
tell an anonymous client how the server is laid out. The HTTP layer passes every error message
and every job it answers with through this module (:func:`app.middleware.error_body`,
:func:`app.schemas.job_out`), so the rule is written once.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# An absolute POSIX path of at least two components (``/srv/data/uploads/x/PMC1.tar.gz``), not part
# of a URL (``http://host/a/b``: preceded by a host character) and not an API route (``/api/...``,
# which messages may cite on purpose).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?!api/)(?:[^\s/'\"`()<>\[\]{},;]+/)+([^\s/'\"`()<>\[\]{},;]*)")
_MAX_DEPTH = 6  # nested containers deeper than this in a job's error entries are cut


def redact_paths(text: str) -> str:
    """``text`` with each absolute filesystem path replaced by ``.../<last component>``."""
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}" if m.group(1) else "...", text)


def redact(value: Any, depth: int = 0) -> Any:
    """A JSON-like ``value`` (str, list, dict, number...) with :func:`redact_paths` applied to
    every string in it, keys included."""
    if isinstance(value, str):
        return redact_paths(value)
    if depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {redact(k, depth + 1): redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, depth + 1) for v in value]
    return value


def worker_label(worker_id: str | None) -> str | None:
    """An opaque, stable label for a worker id (``host:pid:nonce`` -> ``w-3f2a9c1d07``): jobs run
    by the same worker share it, and it names neither the host nor the process."""
    if not worker_id:
        return None
    return "w-" + hashlib.sha256(worker_id.encode("utf-8")).hexdigest()[:10]
