"""The one home of BiomedSearch configuration.

Every setting is read from the environment with the prefix ``BIOMEDSEARCH_`` (or from a ``.env``
file in the working directory), once, at an entry point: the ``biomedsearch`` CLI or
``create_app(settings)``. Library code in ``indexer`` and ``training`` never reads the environment;
it receives plain arguments derived from a :class:`Settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.vocabulary import SearchMode

if TYPE_CHECKING:
    from indexer.index_update import IndexOptions
    from indexer.ingest import IngestLimits


class Settings(BaseSettings):
    """Service, indexer and CLI settings (env prefix ``BIOMEDSEARCH_``)."""

    model_config = SettingsConfigDict(
        env_prefix="BIOMEDSEARCH_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- storage -------------------------------------------------------------------------------
    data_home: Path = Field(Path("./data"), description="Root of everything the service writes.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file `catalogue.db` in the data home."
    )

    # --- encoder ---------------------------------------------------------------------------------
    model: str | None = Field(
        None,
        description="Encoder spec: `local-dir:PATH`, a plain path or `hf-hub:NAME`; "
        "default: the newest model under `<data_home>/models/` (see `default_model_spec`).",
    )
    device: str = Field("auto", description="`auto` (GPU when present), `cpu`, `cuda` or `cuda:N`.")
    encode_batch_size: int = Field(64, ge=1, le=4096, description="Images or captions per encoder batch.")
    encoder_precision: Literal["auto", "fp32"] = Field(
        "auto",
        description="Encoder arithmetic: `auto` runs the towers under fp16 autocast on a GPU and bf16 autocast on "
        "a CPU with native bf16 (about twice the speed; cosine >= 0.996 to float32), `fp32` always in float32.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads per process for the encoders (0: PyTorch's default, one per core); "
        "lower it where other busy processes share the cores.",
    )
    text_model: str | None = Field(
        "minilm",
        description="Sentence encoder of hybrid search's caption channel: `minilm` (the bundled "
        "all-MiniLM-L6-v2) or a local Hugging Face model folder; empty: the CLIP text tower.",
    )

    # --- ingestion ---------------------------------------------------------------------------------
    max_image_pixels: int = Field(60_000_000, ge=1, description="Decompression-bomb guard per image.")
    max_archive_members: int = Field(20_000, ge=1, description="Most members an uploaded or fetched package may hold.")
    max_archive_bytes: int = Field(2 * 1024**3, ge=1, description="Total unpacked bytes per package.")
    max_member_bytes: int = Field(512 * 1024**2, ge=1, description="Largest single archive member.")
    thumbnail_size: int = Field(320, ge=32, le=2048, description="Longest side of the stored thumbnails (px).")

    # --- PMC Cloud Service client ---------------------------------------------------------------------
    pmc_cloud_url: str = Field(
        "https://pmc-oa-opendata.s3.amazonaws.com",
        description="PMC Cloud Service bucket (`fetch`, PMCIDs given to the API): read anonymously over "
        "HTTPS; only this host is contacted.",
    )
    pmc_requests_per_second: float = Field(
        3.0, gt=0, le=10, description="Polite rate limit towards the PMC Cloud Service (requests/s)."
    )
    pmc_retries: int = Field(5, ge=0, le=20, description="Retries per PMC request (exponential backoff).")
    pmc_timeout_s: float = Field(60.0, gt=0, description="Timeout per PMC request (s).")

    # --- vector index --------------------------------------------------------------------------------
    exact_index_max: int = Field(
        50_000, ge=1, description="Up to this many vectors the index is exact (flat inner product)."
    )
    recall_target: float = Field(0.95, gt=0, le=1, description="Recall@10 vs exact for ANN tuning.")
    index_structure: Literal["ivf", "hnsw"] = Field(
        "ivf",
        description="Approximate index above `exact_index_max`: `ivf` (IVF + 8-bit codes; deletes in place) or "
        "`hnsw` (HNSW graph + 8-bit codes: faster single queries at the same recall, CPU only; a version "
        "that must delete vectors is rebuilt).",
    )
    retrain_growth: float = Field(
        2.0, gt=1, description="Retrain an approximate index once it grew by this factor."
    )
    use_gpu: bool = Field(True, description="Use faiss GPUs when faiss-gpu and a GPU are present.")

    # --- service -----------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `serve` binds (use 0.0.0.0 in a container).")
    port: int = Field(8000, ge=1, le=65535, description="Port `serve` listens on.")
    api_key: SecretStr | None = Field(None, description="Required by write endpoints when set.")
    read_api_key: SecretStr | None = Field(None, description="When set, reads need a key too.")
    max_upload_bytes: int = Field(200 * 1024**2, ge=1, description="Largest request body (checked before it is read).")
    max_query_chars: int = Field(1000, ge=1, le=100_000, description="Longest text query.")
    query_cache_size: int = Field(1024, ge=0, description="Text query embeddings kept (LRU); 0 disables.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list); closed by default."
    )
    run_worker: bool = Field(True, description="Run the re-index worker inside the API process.")
    worker_poll_s: float = Field(1.0, gt=0, description="How often an idle worker looks for a queued job (s).")
    job_stale_s: float = Field(60.0, gt=0, description="A running job silent this long is re-queued.")
    job_max_attempts: int = Field(3, ge=1, description="Claims per job before it is marked failed.")
    index_poll_s: float = Field(2.0, gt=0, description="How often the service looks for a new index.")
    max_queued_jobs: int = Field(
        100, ge=1, description="Most unfinished (queued or running) jobs; new uploads and fetches answer 503 beyond it."
    )
    min_free_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="Free-space floor of the data home's disk: new work that would go below it answers 507.",
    )
    sweep_interval_s: float = Field(
        600.0, gt=0, description="How often a worker removes unreferenced uploads and old downloads (s)."
    )
    download_retention_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="Fetched packages under `downloads/` older than this are removed (s; 0 keeps them).",
    )

    # --- image queries (POST /api/search/image): their own limits, far below the ingestion ones -------
    query_image_max_bytes: int = Field(
        20 * 1024**2, ge=1, description="Largest query-image request body (counted while it streams in; 413 above)."
    )
    query_image_max_pixels: int = Field(
        16_000_000, ge=1, description="Largest query image in pixels, read from its header (422 above).",
    )
    query_image_slots: int = Field(
        2, ge=1, description="Query images decoded and encoded at once; further queries wait for a slot."
    )
    query_image_wait_s: float = Field(
        2.0, ge=0, description="How long a query image waits for a slot before the answer is 503 with Retry-After."
    )
    query_image_rate_per_minute: int = Field(
        0, ge=0, description="Image queries per client address per minute (429 with Retry-After above); 0: no limit."
    )

    # --- hybrid ranking ------------------------------------------------------------------------------
    parallel_channels: bool = Field(
        True,
        description="Run a hybrid query's channels (full-text, CLIP image index, caption index) side by side "
        "in threads instead of one after another.",
    )
    search_mode: SearchMode = Field(
        SearchMode.HYBRID, description="Default ranking of text queries (the API's `mode`)."
    )
    weight_lexical: float = Field(1.0, ge=0, description="Hybrid: weight of full-text search (0 switches it off).")
    weight_image: float = Field(
        0.02, ge=0, description="Hybrid: weight of the CLIP image index (raise it for a strong encoder)."
    )
    weight_caption: float = Field(1.5, ge=0, description="Hybrid: weight of the caption index.")
    rrf_k: int = Field(60, ge=1, description="Hybrid: reciprocal-rank-fusion constant.")

    @field_validator("database_url", "model", "text_model", "api_key", "read_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (``BIOMEDSEARCH_API_KEY=``, as compose passes it) means "not set"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL in use: ``database_url`` or a SQLite file in the data home."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_home / 'catalogue.db'}"

    @property
    def shown_database_url(self) -> str:
        """:attr:`resolved_database_url` with its password masked (``***``): what messages and
        ``biomedsearch config`` print."""
        return masked_url(self.resolved_database_url)

    @property
    def index_dir(self) -> Path:
        """Where FAISS index versions and their pointers live (``<data_home>/indexes``)."""
        return self.data_home / "indexes"

    @property
    def models_dir(self) -> Path:
        """Where trained and exported encoders live (``<data_home>/models``)."""
        return self.data_home / "models"

    @property
    def downloads_dir(self) -> Path:
        """Where fetched PMC article versions land (``<data_home>/downloads``)."""
        return self.data_home / "downloads"

    def default_model_spec(self) -> str | None:
        """The encoder spec to use: ``model`` when set, else the newest export in ``models_dir``.

        Returns None when neither exists.
        """
        if self.model:
            return self.model
        if not self.models_dir.is_dir():
            return None
        exports = [p.parent for p in self.models_dir.glob("*/open_clip_config.json")]
        if not exports:
            return None
        newest = max(exports, key=lambda p: (p / "open_clip_config.json").stat().st_mtime)
        return f"local-dir:{newest}"

    def apply_torch_threads(self) -> None:
        """Set PyTorch's intra-op thread count to ``torch_threads`` (no-op, and no torch import, at 0)."""
        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)

    def ingest_limits(self) -> IngestLimits:
        """The ingestion caps (pixel, archive member count and size, thumbnail size) as the indexer takes them."""
        from indexer.ingest import IngestLimits

        return IngestLimits(
            max_image_pixels=self.max_image_pixels,
            max_archive_members=self.max_archive_members,
            max_archive_bytes=self.max_archive_bytes,
            max_member_bytes=self.max_member_bytes,
            thumbnail_size=self.thumbnail_size,
        )

    def index_options(self, *, rebuild: bool = False) -> IndexOptions:
        """The index-building options (exact/approximate threshold and structure, recall target, retrain growth)."""
        from indexer.index_update import IndexOptions
        from indexer.vector_index import AnnSpec

        return IndexOptions(
            exact_index_max=self.exact_index_max,
            recall_target=self.recall_target,
            retrain_growth=self.retrain_growth,
            ann=AnnSpec(structure=self.index_structure),
            rebuild=rebuild,
        )


def config_table() -> str:
    """The configuration reference as a Markdown table: variable, default, what it sets (for the README)."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        elif field.default is None:
            default = "unset"
        elif isinstance(field.default, Path):
            default = f"./{field.default}"
        else:
            default = str(field.default)
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `BIOMEDSEARCH_{name.upper()}` | `{default}` | {description} |")
    return "\n".join(rows) + "\n"


def masked_url(url: str) -> str:
    """A database URL fit to print: its password replaced by ``***`` (unparseable URLs are shown
    only up to their scheme)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.split("://", 1)[0] + "://..."
