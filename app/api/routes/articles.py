"""``GET /api/articles/{id}`` and ``POST /api/articles`` (queue new articles for indexing)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from starlette.datastructures import UploadFile

from app.api.deps import ServicesDep, SessionDep, require_write_key
from app.api.routes._common import ERRORS, MAX_ID
from app.config import Settings
from app.jobs import enqueue
from app.middleware import ApiError, clean_validation_errors
from app.quotas import NoCapacity, admit_work, check_free_space, unpack_budget
from app.schemas import ArticleOut, ErrorResponse, FetchRequest, JobAccepted, article_ref, figure_out
from app.uploads import UploadError, inspect_package, save_upload
from indexer.catalogue import Article
from indexer.vocabulary import JobKind

router = APIRouter(prefix="/api/articles", tags=["articles"], responses=ERRORS)

MAX_JSON_BODY_BYTES = 64 * 1024  # a PMCID request (at most MAX_PMCIDS ids) is a few KB

_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "A PMC OA package (.tar.gz) or a .zip of a JATS folder.",
                    }
                },
            }
        },
        "application/json": {
            "schema": FetchRequest.model_json_schema(),
            "example": {"pmcids": ["PMC3166277"]},
        },
    },
}


@router.get("/{article_id}", response_model=ArticleOut, summary="One article with its figures")
def get_article(
    article_id: Annotated[int, PathParam(ge=1, le=MAX_ID, description="Article id.")], session: SessionDep
) -> ArticleOut:
    """The article's metadata, link and figures in document order."""
    art = session.execute(
        select(Article).where(Article.id == article_id).options(selectinload(Article.figures))
    ).scalar_one_or_none()
    if art is None:
        raise ApiError(404, f"article {article_id} not found")
    return ArticleOut(
        **article_ref(art).model_dump(),
        license_url=art.license_url,
        article_type=art.article_type,
        lang=art.lang,
        source=None,
        figures=[figure_out(fig, art) for fig in art.figures],
    )


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    summary="Add articles (upload a package, or give PMCIDs to fetch)",
    description="Multipart `file`: a PMC package (.tar.gz) or a zipped JATS folder. JSON "
    '`{"pmcids": [...]}`: article versions fetched from the PMC Cloud Service (`PMC123`: the latest, '
    "`PMC123.2`: that version; retracted articles are not added and are withdrawn). Answers 202 with the "
    "id of a queued job that ingests, embeds and publishes; poll `GET /api/jobs/{id}`. Needs the "
    "`X-API-Key` header.",
    dependencies=[Depends(require_write_key)],
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        403: {"model": ErrorResponse, "description": "Writes are disabled (no API key configured)"},
        415: {"model": ErrorResponse, "description": "Neither multipart nor JSON, or not a package"},
    },
)
async def add_articles(request: Request, response: Response, services: ServicesDep) -> JobAccepted:
    """Store the upload (or validate the PMCIDs) and enqueue a job."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    settings = services.settings
    await _admit(request, services)
    if content_type == "multipart/form-data":
        kind, payload = JobKind.INGEST, await _store_upload(request, settings)
    elif content_type == "application/json":
        kind, payload = JobKind.FETCH, await _pmcids(request)
    else:
        raise ApiError(415, 'send multipart/form-data with a `file`, or JSON {"pmcids": [...]}')
    try:
        job_id = await run_in_threadpool(enqueue, services.session_factory, kind, payload)
    except BaseException:
        for raw in payload.get("paths", []):
            shutil.rmtree(Path(raw).parent, ignore_errors=True)
        raise
    status_url = f"/api/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(job_id=job_id, status_url=status_url)


async def _admit(request: Request, services: ServicesDep) -> None:
    """Refuse new work when the job queue or the disk budget is spent (:mod:`app.quotas`)."""
    try:
        incoming = int(request.headers.get("content-length") or 0)
    except ValueError:
        incoming = 0
    try:
        await run_in_threadpool(admit_work, services.settings, services.session_factory, incoming)
    except NoCapacity as exc:
        raise _no_capacity(exc) from exc


def _no_capacity(exc: NoCapacity) -> ApiError:
    """507 when the disk is short, 503 + ``Retry-After`` when the queue is full."""
    status = 507 if exc.resource == "disk" else 503
    code = "insufficient_storage" if exc.resource == "disk" else "queue_full"
    return ApiError(status, exc.message, code=code, headers={"Retry-After": str(exc.retry_after_s)})


async def _store_upload(request: Request, settings: Settings) -> dict[str, Any]:
    """Store the multipart ``file`` under ``uploads/`` and inspect it (an unsafe package is 422)."""
    try:
        form = await request.form(max_files=1, max_fields=5)
    except Exception as exc:  # multipart parse errors from Starlette
        raise ApiError(400, f"malformed multipart body: {exc}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "the multipart body needs a `file` part holding the package")
        try:
            path = await run_in_threadpool(save_upload, upload.file, upload.filename, settings.data_home / "uploads")
        except UploadError as exc:
            raise ApiError(415, str(exc)) from exc
        try:
            await run_in_threadpool(check_free_space, settings, unpack_budget(settings, path))
        except NoCapacity as exc:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise _no_capacity(exc) from exc
        try:
            await run_in_threadpool(inspect_package, path, settings.ingest_limits().archive)
        except UploadError as exc:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise ApiError(422, f"package refused: {exc}", code="unsafe_package") from exc
    finally:
        await form.close()
    return {"paths": [str(path)], "filename": upload.filename}


async def _pmcids(request: Request) -> dict[str, Any]:
    """The PMCIDs of a JSON body: read up to :data:`MAX_JSON_BODY_BYTES` (else 413) and parsed by
    pydantic's JSON parser, whose nesting limit turns ``[[[[...`` into a 400, not a RecursionError."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BODY_BYTES:
            raise ApiError(413, f"a JSON body may hold at most {MAX_JSON_BODY_BYTES} bytes")
    try:
        req = FetchRequest.model_validate_json(bytes(raw))
    except ValidationError as exc:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            reason = next(str(err.get("msg", "")) for err in exc.errors() if err.get("type") == "json_invalid")
            raise ApiError(400, f"malformed JSON body: {reason[:200]}") from exc
        details = clean_validation_errors(exc.errors())
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        raise ApiError(422, f"{'.'.join(first['loc']) or 'body'}: {first['msg']}", details=details) from exc
    return {"pmcids": req.pmcids}
