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


class Stage(StrEnum):
    """The re-index pipeline's stages, in the order they run (:mod:`indexer.pipeline` runs them).

    A job's ``stage`` column shows the one it is in, and ``counts["seconds"]`` times each.
    ``FETCH`` (PMCIDs to download) runs before the pipeline, in a fetch job only.
    """

    FETCH = "fetch"
    INGEST = "ingest"
    EMBED = "embed"  # the image vectors (every vector when the images are not published first)
    PUBLISH = "publish"  # the CLIP indexes: from here text -> figure and image -> figure find them
    CAPTIONS = "captions"  # the CLIP caption vectors
    PUBLISH_CAPTIONS = "publish_captions"  # the CLIP indexes again, with the caption vectors
    CAPTION_CHANNEL = "caption_channel"  # the sentence encoder's caption vectors and index

    @property
    def progress(self) -> tuple[float, float]:
        """Where this stage's share of a job's progress bar (0..1) starts and ends."""
        return _STAGE_PROGRESS[self]


_STAGE_PROGRESS = {
    Stage.FETCH: (0.0, 0.15),
    Stage.INGEST: (0.15, 0.35),
    Stage.EMBED: (0.35, 0.65),
    Stage.PUBLISH: (0.65, 0.7),
    Stage.CAPTIONS: (0.7, 0.95),
    Stage.PUBLISH_CAPTIONS: (0.95, 0.96),
    Stage.CAPTION_CHANNEL: (0.96, 0.99),
}


class VectorKind(StrEnum):
    """Which side of a figure a stored vector (and the index built from it) encodes."""

    IMAGE = "image"
    CAPTION = "caption"


class PmcObjectStatus(StrEnum):
    """What a fetch did with one PMC Cloud metadata object (a row of ``pmc_objects``)."""

    INGESTED = "ingested"  # downloaded, verified and in the catalogue
    RETRACTED = "retracted"  # retracted: not added, withdrawn when it was present
    FILTERED = "filtered"  # passed over by the --license filter
    SUPERSEDED = "superseded"  # an older version than the one the catalogue holds or fetched
    REFUSED = "refused"  # a file's md5 did not match: nothing of it stored (retried once the ETag changes)
    FAILED = "failed"  # a transport or ingest failure (retried by the next run)

    @classmethod
    def settled(cls) -> tuple[PmcObjectStatus, ...]:
        """Outcomes a later run does not redo while the object's ETag stays the same."""
        return (cls.INGESTED, cls.RETRACTED, cls.SUPERSEDED, cls.REFUSED)


class SearchMode(StrEnum):
    """How a text query is ranked: the full-text and dense channels fused, the CLIP image index
    alone, or the full-text index alone (the API's ``mode``, ``Settings.search_mode``)."""

    HYBRID = "hybrid"
    DENSE = "dense"
    LEXICAL = "lexical"


class ImageQueryMode(StrEnum):
    """What an image query ranks: figure captions (image -> text) or figure images (image -> image)."""

    TEXT = "text"
    IMAGE = "image"
