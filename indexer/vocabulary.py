"""The catalogue's named vocabularies: one ``StrEnum`` per concept, used by models, schemas, workers and backups.

Each member's value is the string stored in the database and shown in the API, so the enums compare
equal to (and serialise as) the plain strings that older rows and clients use.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    LABEL = "label"  # each figure's type (per model) and multi-panel flag (:mod:`indexer.labels`)
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
    Stage.EMBED: (0.35, 0.62),
    Stage.LABEL: (0.62, 0.65),
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


class FigureGroup(StrEnum):
    """The groups of :class:`FigureType` (Open-i's image-type families); ``type=radiology`` selects a
    group's types in the API."""

    RADIOLOGY = "radiology"
    MICROSCOPY = "microscopy"
    OTHER_IMAGES = "other_images"
    GRAPHICS = "graphics"
    FALLBACK = "fallback"

    @property
    def label(self) -> str:
        """The group's name for people."""
        return _GROUP_LABELS[self]

    @property
    def types(self) -> tuple[FigureType, ...]:
        """The group's types, in vocabulary order."""
        return tuple(t for t in FigureType if t.group is self)


class FigureType(StrEnum):
    """What a figure shows (:mod:`indexer.figure_types` assigns it at index time), in the spirit of
    NLM Open-i's image types. The value is what the catalogue stores and the API's ``type=`` takes."""

    CT = "ct"
    MRI = "mri"
    XRAY = "xray"  # radiograph, mammogram, fluoroscopy
    ULTRASOUND = "ultrasound"  # incl. echocardiography, Doppler
    NUCLEAR = "nuclear"  # nuclear medicine: PET, SPECT, scintigraphy
    ANGIOGRAPHY = "angiography"  # catheter / CT / MR angiography, DSA
    HISTOLOGY = "histology"  # light microscopy of stained tissue (H&E, PAS, trichrome...), cytology
    FLUORESCENCE = "fluorescence"  # immunohistochemistry, immunofluorescence, confocal
    ELECTRON = "electron"  # electron microscopy (TEM, SEM)
    PHOTO = "photo"  # photograph: clinical (patient, lesion, operative field, fundus), specimen, device, culture
    ENDOSCOPY = "endoscopy"
    GEL = "gel"  # gel electrophoresis, western / northern / southern blot
    CHART = "chart"  # plots, graphs, curves, histograms
    DIAGRAM = "diagram"  # schematics, flow charts, models, drawings, maps, trees
    TABLE = "table"  # a table set as an image
    OTHER = "other"

    @property
    def label(self) -> str:
        """The type's name for people (facet sidebar, figure page)."""
        return _TYPE_LABELS[self]

    @property
    def group(self) -> FigureGroup:
        """The group the type belongs to."""
        return _TYPE_GROUPS[self]


_TYPE_GROUPS = {
    **dict.fromkeys(
        (FigureType.CT, FigureType.MRI, FigureType.XRAY, FigureType.ULTRASOUND, FigureType.NUCLEAR,
         FigureType.ANGIOGRAPHY),
        FigureGroup.RADIOLOGY,
    ),
    **dict.fromkeys((FigureType.HISTOLOGY, FigureType.FLUORESCENCE, FigureType.ELECTRON), FigureGroup.MICROSCOPY),
    **dict.fromkeys((FigureType.PHOTO, FigureType.ENDOSCOPY, FigureType.GEL), FigureGroup.OTHER_IMAGES),
    **dict.fromkeys((FigureType.CHART, FigureType.DIAGRAM, FigureType.TABLE), FigureGroup.GRAPHICS),
    FigureType.OTHER: FigureGroup.FALLBACK,
}
_TYPE_LABELS = {
    FigureType.CT: "CT",
    FigureType.MRI: "MRI",
    FigureType.XRAY: "X-ray",
    FigureType.ULTRASOUND: "Ultrasound",
    FigureType.NUCLEAR: "Nuclear medicine / PET",
    FigureType.ANGIOGRAPHY: "Angiography",
    FigureType.HISTOLOGY: "Histology / H&E",
    FigureType.FLUORESCENCE: "IHC / fluorescence",
    FigureType.ELECTRON: "Electron microscopy",
    FigureType.PHOTO: "Photograph",
    FigureType.ENDOSCOPY: "Endoscopy",
    FigureType.GEL: "Gel / blot",
    FigureType.CHART: "Chart / plot",
    FigureType.DIAGRAM: "Diagram / schematic",
    FigureType.TABLE: "Table (image)",
    FigureType.OTHER: "Other",
}
_GROUP_LABELS = {
    FigureGroup.RADIOLOGY: "Radiology",
    FigureGroup.MICROSCOPY: "Microscopy",
    FigureGroup.OTHER_IMAGES: "Other images",
    FigureGroup.GRAPHICS: "Graphics",
    FigureGroup.FALLBACK: "Other",
}


def figure_types(names: Iterable[str]) -> frozenset[FigureType]:
    """The figure types that ``names`` select: each a type (``ct``) or a group (``radiology``: its
    types), any case, surrounding spaces ignored. Raises ValueError naming an unknown one."""
    out: set[FigureType] = set()
    for raw in names:
        name = raw.strip().lower()
        if name in FigureType._value2member_map_:
            out.add(FigureType(name))
        elif name in FigureGroup._value2member_map_:
            out.update(FigureGroup(name).types)
        else:
            known = ", ".join([*FigureType, *FigureGroup])
            raise ValueError(f"unknown figure type {raw[:40]!r} (one of: {known})")
    return frozenset(out)


class PanelEvidence(StrEnum):
    """What made a figure multi-panel (``figures.multipanel_evidence``): panel labels in its caption,
    uniform gutters across its image, both, or neither (a single panel)."""

    CAPTION = "caption"
    IMAGE = "image"
    BOTH = "both"
    NONE = "none"
