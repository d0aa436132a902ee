"""The catalogue's named vocabularies: one ``StrEnum`` per concept, used by models, schemas, workers and backups.

Each member's value is the string stored in the database and shown in the API, so the enums compare
equal to (and serialise as) the plain strings that older rows and clients use.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a durable re-index job is: waiting, claimed by a worker, or ended."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @classmethod
    def live(cls) -> tuple[JobState, ...]:
        """The states of a job that has not ended (its inputs must be kept)."""
        return (cls.QUEUED, cls.RUNNING)


class JobKind(StrEnum):
    """What a re-index job starts from: stored uploads (``ingest``) or PMCIDs to download (``fetch``)."""

    INGEST = "ingest"
    FETCH = "fetch"


class VectorKind(StrEnum):
    """Which side of a figure a stored vector (and the index built from it) encodes."""

    IMAGE = "image"
    CAPTION = "caption"
