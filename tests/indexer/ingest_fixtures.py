"""Builders for the ingestion tests: JATS XML, images, tar packages, shared-data lookups."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from indexer.catalogue import make_engine, make_session_factory
from indexer.ingest import IngestLimits

LIMITS = IngestLimits(
    max_image_pixels=40_000_000,
    max_archive_members=2_000,
    max_archive_bytes=200 * 1024**2,
    max_member_bytes=50 * 1024**2,
    thumbnail_size=128,
)


def factory_for(url: str):  # type: ignore[no-untyped-def]
    """(engine, session factory) for a migrated catalogue URL."""
    engine = make_engine(url)
    return engine, make_session_factory(engine)


def jpeg_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB", color: object = (200, 30, 30)) -> bytes:
    """A small JPEG in ``mode``."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="JPEG", quality=90)  # type: ignore[arg-type]
    return buf.getvalue()


def png_bytes(size: tuple[int, int] = (40, 30), mode: str = "RGBA", color: object = (0, 0, 255, 0)) -> bytes:
    """A small PNG in ``mode`` (transparent blue by default)."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def article_xml(
    body: str = "",
    *,
    ids: str = '<article-id pub-id-type="pmc">9999999</article-id>',
    title: str = "A test article",
    back: str = "",
    floats: str = "",
    doctype: str = "",
) -> bytes:
    """A minimal JATS article with the given body / back / floats-group content."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>{doctype}
<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="research-article" xml:lang="en">
<front><journal-meta><journal-title-group><journal-title>Test Journal</journal-title></journal-title-group>
</journal-meta><article-meta>{ids}<title-group><article-title>{title}</article-title></title-group>
<pub-date pub-type="epub"><year>2021</year></pub-date><pub-date pub-type="ppub"><year>2020</year></pub-date>
<permissions><license xlink:href="https://creativecommons.org/licenses/by-nc/4.0/"><license-p>Open.</license-p>
</license></permissions></article-meta></front>
<body>{body}</body><back>{back}</back>{floats}</article>""".encode()


def fig(fig_id: str, href: str | list[str], caption: str = "A caption.") -> str:
    """A <fig> element with one or more graphics."""
    hrefs = [href] if isinstance(href, str) else href
    graphics = "".join(f'<graphic xlink:href="{h}"/>' for h in hrefs)
    return (
        f'<fig id="{fig_id}"><label>Figure</label><caption><title>Title {fig_id}</title><p>{caption}</p>'
        f"</caption>{graphics}</fig>"
    )


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A .tar.gz holding regular files ``(name, data)``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def manifest_entries(jats_dir: Path) -> dict[str, dict[str, object]]:
    """``jats/manifest.jsonl`` by article id."""
    lines = (jats_dir / "manifest.jsonl").read_text().splitlines()
    return {entry["id"]: entry for entry in map(json.loads, lines)}


def resolved_fig_graphics(entry: dict[str, object]) -> int:
    """How many <fig> graphics of a manifest entry have a file."""
    graphics = entry["graphics"]
    assert isinstance(graphics, list)
    return sum(1 for g in graphics if g["context"] == "fig" and g["element"] == "graphic" and g["file"])
