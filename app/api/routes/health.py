"""``GET /healthz`` (liveness), ``GET /readyz`` (encoder and index loaded), ``GET /metrics``.

With ``read_api_key`` set, ``/metrics`` needs the key and ``/readyz`` shows only ``ready`` without
it; ``/healthz`` stays open (it says nothing but "ok")."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ReadsAllowedDep, ServicesDep, require_read_key
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """Always ok while the process answers."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: encoder loaded and vectors indexed",
    responses={503: {"model": Readiness, "description": "Not ready; `reasons` says why"}},
)
async def readyz(services: ServicesDep, allowed: ReadsAllowedDep) -> Response:
    """200 when searches can be answered with results, else 503 with the reasons. When reads need
    a key and the request has none, only ``ready`` is shown (a probe needs no more)."""
    search = services.search
    ready, reasons = await run_in_threadpool(search.readiness)
    if not allowed:
        return JSONResponse(Readiness(ready=ready).model_dump(include={"ready"}), status_code=200 if ready else 503)
    if services.worker is not None and services.worker.waiting:  # jobs held back: no encoder
        reasons.append(services.worker.waiting)
    body = Readiness(
        ready=ready,
        model_id=search.encoder.model_id if search.encoder_loaded else None,
        indexes=search.index_sizes(),
        reasons=reasons,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(require_read_key)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(services: ServicesDep) -> Response:
    """Latency histograms per route; encode, search and database time; index size; job counts."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
