"""Request and response models of the REST API, with their bounds and OpenAPI examples.

Bounds a client can rely on (and that the OpenAPI document states):

- ``k`` (results per page): 1..100; ``offset``: 0..999 and ``offset + k <= 1000`` (deeper pages
  are refused with 422 rather than answered slowly);
- ``q``: 1..``max_query_chars`` characters (a setting, 1000 by default);
- ``pmcids``: 1..100 identifiers of the form ``PMC123`` (or bare digits) per request.

Every 4xx and 5xx answer has the body :class:`ErrorResponse`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.redaction import redact, worker_label
from indexer.vocabulary import (
    FigureGroup,
    FigureType,
    ImageQueryMode,
    JobKind,
    JobState,
    PanelEvidence,
    SearchMode,
)

if TYPE_CHECKING:
    from indexer.catalogue import Article, Figure, Job
    from indexer.facets import FacetValue

MAX_K = 100
MAX_DEPTH = 1000  # offset + k
MAX_PMCIDS = 100
PMCID_RE = re.compile(r"^(?:PMC)?(\d{1,12})(?:\.(\d{1,4}))?$", re.IGNORECASE)  # PMC123 or PMC123.VERSION


class ErrorDetail(BaseModel):
    """What went wrong, machine-readable (``code``) and for people (``message``)."""

    status: int = Field(description="The HTTP status code, repeated.")
    code: str = Field(description="A stable identifier, e.g. `validation_error`, `not_found`.")
    message: str
    details: list[dict[str, Any]] | None = Field(None, description="Per-field problems for validation errors.")


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 5xx); never a stack trace."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"status": 404, "code": "not_found", "message": "figure 7 not found"}}]
        }
    )
    error: ErrorDetail


class ArticleRef(BaseModel):
    """An article as shown next to a figure: identifiers, bibliographic data, a link to read it."""

    id: int
    pmcid: str | None = None
    doi: str | None = None
    pmid: str | None = None
    title: str | None = None
    journal: str | None = None
    year: int | None = None
    license: str | None = None
    url: str | None = Field(
        None,
        description="https://pmc.ncbi.nlm.nih.gov/articles/PMCID/ or, without a PMCID, the doi.org link.",
    )


class FigureTypeOut(BaseModel):
    """What a figure shows, as the classifier of the encoder ``model_id`` labelled it."""

    value: FigureType = Field(description="The figure type (the `type=` filter's values).")
    label: str = Field(description="Its name for people, e.g. `Histology / H&E`.")
    group: FigureGroup = Field(description="Its group: radiology, microscopy, other_images, graphics, fallback.")
    confidence: float = Field(ge=0, le=1, description="The classifier's probability of this type.")
    model_id: str | None = Field(None, description="The encoder whose zero-shot scores went into the label.")


class FigureOut(BaseModel):
    """One figure with its caption, media URLs, article and (once labelled) its type and multi-panel flag."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 12,
                    "label": "Figure 2",
                    "caption": "Axial CT of the chest showing a right upper lobe mass.",
                    "caption_title": "Chest CT.",
                    "fig_id": "fig2",
                    "position": 1,
                    "width": 1200,
                    "height": 900,
                    "has_image": True,
                    "image_url": "/api/figures/12/image",
                    "thumbnail_url": "/api/figures/12/thumbnail",
                    "figure_type": {"value": "ct", "label": "CT", "group": "radiology", "confidence": 0.91,
                                    "model_id": "tiny-0123456789ab"},
                    "multipanel": False,
                    "multipanel_evidence": "none",
                    "article": {
                        "id": 3,
                        "pmcid": "PMC3166277",
                        "title": "A study",
                        "journal": "BMC Microbiology",
                        "year": 2011,
                        "license": "CC BY 2.0",
                        "url": "https://pmc.ncbi.nlm.nih.gov/articles/PMC3166277/",
                    },
                }
            ]
        }
    )
    id: int
    label: str | None = None
    caption: str = ""
    caption_title: str | None = None
    fig_id: str | None = None
    position: int = 0
    width: int | None = None
    height: int | None = None
    has_image: bool
    image_url: str | None = None
    thumbnail_url: str | None = None
    figure_type: FigureTypeOut | None = Field(None, description="The figure's type; absent until it is labelled.")
    multipanel: bool | None = Field(None, description="Whether the figure has several panels; absent until labelled.")
    multipanel_evidence: PanelEvidence | None = Field(
        None, description="What found the panels: `caption` (panel labels), `image` (gutters), `both` or `none`."
    )
    article: ArticleRef


class Match(BaseModel):
    """Why a text-search result matched: the signals that found it, its rank in each, and the
    query terms found per field (``caption``, ``mention``, ``title``, ``label``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channels": ["lexical", "image"],
                    "ranks": {"lexical": 1, "image": 7},
                    "terms": ["steatosis", "liver"],
                    "where": {"caption": ["steatosis", "liver"], "mention": ["steatosis"]},
                }
            ]
        }
    )
    channels: list[str] = Field(description="Signals that returned the figure: lexical, image, caption.")
    ranks: dict[str, int] = Field(description="The figure's 1-based rank in each signal.")
    terms: list[str] = Field(default_factory=list, description="Query terms found in the figure's text.")
    where: dict[str, list[str]] = Field(
        default_factory=dict, description="Field (caption, mention, title, label) -> the words that matched there."
    )


class FigureHit(FigureOut):
    """A ranked search result: a figure with its rank (1-based, across pages), score and match."""

    rank: int = Field(ge=1)
    score: float = Field(
        description="dense / image modes: cosine similarity of the query and the figure (or caption); "
        "hybrid and lexical: the fused reciprocal-rank score (comparable within one query only)."
    )
    match: Match | None = Field(None, description="hybrid and lexical text search: why the figure matched.")


class FacetCount(BaseModel):
    """One value of a facet and how many of the query's candidates have it."""

    value: str | int | bool = Field(description="The filter value (a figure type, a year, a journal, a license).")
    count: int = Field(ge=0)
    label: str | None = Field(None, description="type facet: the type's name for people.")
    group: FigureGroup | None = Field(None, description="type facet: the type's group.")


class SearchResponse(BaseModel):
    """A page of ranked figures (and, when asked for, facet counts)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "chest CT",
                    "mode": "hybrid",
                    "channels": ["lexical", "image", "caption"],
                    "k": 10,
                    "offset": 0,
                    "indexed": 1234,
                    "index_version": 3,
                    "results": [],
                    "facets": {"type": [{"value": "ct", "count": 41, "label": "CT", "group": "radiology"}],
                               "year": [{"value": 2019, "count": 12}]},
                    "facet_candidates": 250,
                }
            ]
        }
    )
    query: str | None = Field(None, description="The text query (absent for image queries).")
    mode: SearchMode | ImageQueryMode = Field(
        description="Text queries: `hybrid` (lexical + dense fused), `dense` (CLIP text->image) or `lexical`; "
        "image queries: `text` (image->caption) or `image` (image->image)."
    )
    channels: list[str] = Field(
        default_factory=list, description="Signals that took part: lexical, image (index), caption (index)."
    )
    k: int
    offset: int
    indexed: int = Field(description="Vectors in the index that was searched (0: nothing indexed yet).")
    index_version: int | None = None
    results: list[FigureHit]
    facets: dict[str, list[FacetCount]] | None = Field(
        None,
        description="With `facets=`: per facet, its values with their counts over the query's best "
        "`facet_candidates` candidates, each counted with every filter applied but the facet's own.",
    )
    facet_candidates: int | None = Field(None, description="How many candidates the facets were counted over.")


class ArticleOut(ArticleRef):
    """An article with its figures, in document order."""

    license_url: str | None = None
    article_type: str | None = None
    lang: str | None = None
    source: str | None = None
    figures: list[FigureOut]


class FetchRequest(BaseModel):
    """Add articles by PMCID (``PMC123``: the latest version, ``PMC123.2``: that version): the worker
    fetches them from the PMC Cloud Service."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"pmcids": ["PMC3166277", "PMC2599765"]}]}
    )
    pmcids: list[str] = Field(min_length=1, max_length=MAX_PMCIDS)

    @field_validator("pmcids")
    @classmethod
    def _normalise(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for raw in value:
            match = PMCID_RE.match(raw.strip())
            if not match:
                raise ValueError(f"not a PMCID: {raw[:40]!r} (expected PMC followed by digits, optionally .VERSION)")
            pmcid = f"PMC{int(match.group(1))}" + (f".{int(match.group(2))}" if match.group(2) else "")
            if pmcid not in out:
                out.append(pmcid)
        return out


class JobAccepted(BaseModel):
    """A queued job: poll ``status_url`` for its progress."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"job_id": 4, "status_url": "/api/jobs/4"}]})
    job_id: int
    status_url: str



class JobOut(BaseModel):
    """A re-index job: its state, current stage, progress (0..1), counts and errors."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 4,
                    "kind": "ingest",
                    "state": "running",
                    "stage": "embed",
                    "progress": 0.55,
                    "counts": {"articles": 1, "figures": 5},
                    "errors": [],
                    "attempts": 1,
                    "created_at": "2026-01-01T00:00:00Z",
                }
            ]
        }
    )
    id: int
    kind: JobKind
    state: JobState
    stage: str | None = None
    progress: float
    counts: dict[str, Any]
    errors: list[Any]
    attempts: int
    worker: str | None = Field(
        None, description="An opaque label of the worker that ran the job (the same for jobs of one worker)."
    )
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class JobList(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[JobOut]
    total: int


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: the encoder and the indexes are loaded (``reasons`` says what is missing)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": False,
                    "model_id": "tiny-0123456789ab",
                    "indexes": {"image": 0, "caption": 0},
                    "reasons": ["no index published yet for model tiny-0123456789ab"],
                }
            ]
        }
    )
    ready: bool
    model_id: str | None = None
    indexes: dict[str, int] = Field(default_factory=dict, description="Vectors per index kind.")
    reasons: list[str] = Field(default_factory=list)


# --- from catalogue rows ---------------------------------------------------------------------------


def article_url(pmcid: str | None, doi: str | None) -> str | None:
    """The article's reading link: its PMC page, else its doi.org page, else None."""
    if pmcid:
        return f"https://pmc.ncbi.nlm.nih.gov/articles/{pmcid}/"
    if doi:
        return f"https://doi.org/{doi}"
    return None


def article_ref(art: Article) -> ArticleRef:
    """An :class:`ArticleRef` from an ``Article`` row."""
    return ArticleRef(
        id=art.id,
        pmcid=art.pmcid,
        doi=art.doi,
        pmid=art.pmid,
        title=art.title,
        journal=art.journal,
        year=art.year,
        license=art.license,
        url=article_url(art.pmcid, art.doi),
    )


def figure_type_out(fig: Figure) -> FigureTypeOut | None:
    """The figure's current type label, or None while it has none."""
    if fig.figure_type is None:
        return None
    kind = FigureType(fig.figure_type)
    return FigureTypeOut(
        value=kind, label=kind.label, group=kind.group, confidence=float(fig.type_confidence or 0.0),
        model_id=fig.type_model,
    )


def facet_counts_out(facets: dict[str, list[FacetValue]]) -> dict[str, list[FacetCount]]:
    """The API's facet counts (type values carry their label and group)."""
    out: dict[str, list[FacetCount]] = {}
    for facet, values in facets.items():
        rows = []
        for v in values:
            kind = FigureType(str(v.value)) if facet == "type" else None
            rows.append(FacetCount(value=v.value, count=v.count, label=kind.label if kind else None,
                                   group=kind.group if kind else None))
        out[facet] = rows
    return out


def figure_fields(fig: Figure, art: Article) -> dict[str, Any]:
    """The :class:`FigureOut` fields of a ``Figure`` row and its ``Article`` row."""
    has_image = bool(fig.image_path)
    return {
        "id": fig.id,
        "label": fig.label,
        "caption": fig.caption or "",
        "caption_title": fig.caption_title,
        "fig_id": fig.fig_id,
        "position": fig.position or 0,
        "width": fig.width,
        "height": fig.height,
        "has_image": has_image,
        "image_url": f"/api/figures/{fig.id}/image" if has_image else None,
        "thumbnail_url": f"/api/figures/{fig.id}/thumbnail" if has_image else None,
        "figure_type": figure_type_out(fig),
        "multipanel": fig.multipanel,
        "multipanel_evidence": fig.multipanel_evidence,
        "article": article_ref(art),
    }


def figure_out(fig: Figure, art: Article) -> FigureOut:
    """A :class:`FigureOut` from a ``Figure`` row and its ``Article`` row."""
    return FigureOut(**figure_fields(fig, art))


def job_out(job: Job) -> JobOut:
    """A :class:`JobOut` from a ``Job`` row. The payload (server paths) is not shown; errors are shown
    without server paths and the worker by an opaque label (:mod:`app.redaction`)."""
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        stage=job.stage,
        progress=float(job.progress or 0.0),
        counts=dict(job.counts or {}),
        errors=redact(list(job.errors or [])),
        attempts=job.attempts or 0,
        worker=worker_label(job.worker),
        created_at=_utc(job.created_at),
        started_at=_utc(job.started_at),
        heartbeat_at=_utc(job.heartbeat_at),
        finished_at=_utc(job.finished_at),
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A catalogue timestamp (UTC; naive where the database drops the zone, as SQLite does) as an
    aware UTC datetime, so that it serialises as RFC 3339 with an offset."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
