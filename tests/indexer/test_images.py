"""Image storage: validation, RGB normalisation, content addressing, thumbnails, href resolution."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from ingest_fixtures import jpeg_bytes, png_bytes
from PIL import Image

from indexer.images import ImageRejected, sniff_image, store_image
from indexer.ingest import HrefResolver

KW = {"max_pixels": 10_000_000, "thumbnail_size": 64, "max_bytes": 10 * 1024**2}


def test_rgb_jpeg_is_kept_byte_for_byte_with_a_thumbnail(tmp_path: Path) -> None:
    data = jpeg_bytes((300, 200))
    src = tmp_path / "a.jpg"
    src.write_bytes(data)
    home = tmp_path / "home"
    stored = store_image(src, home, **KW)  # type: ignore[arg-type]
    digest = hashlib.sha256(data).hexdigest()
    assert stored.sha256 == digest
    assert stored.image_path == f"media/{digest[:2]}/{digest}.jpg"
    assert stored.thumb_path == f"media/{digest[:2]}/{digest}.thumb.jpg"
    assert (stored.width, stored.height) == (300, 200)
    assert (home / stored.image_path).read_bytes() == data
    with Image.open(home / stored.thumb_path) as thumb:
        assert max(thumb.size) == 64 and thumb.mode == "RGB"
    assert not list((home / "media" / digest[:2]).glob(".*.tmp"))  # no temp file left behind
    again = store_image(src, home, **KW)  # type: ignore[arg-type]
    assert again == stored


def test_small_jpeg_is_its_own_thumbnail(tmp_path: Path) -> None:
    src = tmp_path / "s.jpg"
    src.write_bytes(jpeg_bytes((60, 40)))
    stored = store_image(src, tmp_path / "home", **KW)  # type: ignore[arg-type]
    assert stored.thumb_path == stored.image_path


def test_grayscale_and_transparent_images_are_normalised_to_rgb(tmp_path: Path) -> None:
    home = tmp_path / "home"
    gray = tmp_path / "g.jpg"
    gray.write_bytes(jpeg_bytes((80, 80), mode="L", color=128))
    stored = store_image(gray, home, **KW)  # type: ignore[arg-type]
    with Image.open(home / stored.image_path) as img:
        assert img.mode == "RGB" and img.format == "JPEG"

    clear = tmp_path / "t.png"
    clear.write_bytes(png_bytes())  # fully transparent blue
    stored = store_image(clear, home, **KW)  # type: ignore[arg-type]
    assert stored.image_path.endswith(".png")
    with Image.open(home / stored.image_path) as img:
        assert img.mode == "RGB"
        assert img.getpixel((5, 5)) == (255, 255, 255)  # flattened onto white


def test_disallowed_format_and_oversized_file_are_refused(tmp_path: Path) -> None:
    pdf = tmp_path / "x.jpg"
    Image.new("RGB", (10, 10)).save(pdf, format="PDF")
    with pytest.raises(ImageRejected):
        store_image(pdf, tmp_path / "home", **KW)  # type: ignore[arg-type]
    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg_bytes((50, 50)))
    with pytest.raises(ImageRejected, match="over"):
        store_image(big, tmp_path / "home", max_pixels=10_000, thumbnail_size=64, max_bytes=100)
    assert not (tmp_path / "home" / "media").exists() or not any((tmp_path / "home" / "media").rglob("*.*"))


def test_sniff_image(tmp_path: Path) -> None:
    good = tmp_path / "ok.jpg"
    good.write_bytes(jpeg_bytes())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"I am not a figure\n")
    assert sniff_image(good, max_pixels=10_000) is None
    assert "not an image" in (sniff_image(bad, max_pixels=10_000) or "")


def test_href_resolution_conventions(tmp_path: Path) -> None:
    for name in ("elife-1-fig1.jpg", "x_fig2.jpg", "pone.0056489.g001.jpg", "fig3.gif", "fig3.jpg", "only.gif",
                 "Upper.JPG", "sub/inner.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path.parent / "outside.jpg").write_bytes(b"x")
    r = HrefResolver(tmp_path)
    assert r.resolve("elife-1-fig1") == tmp_path / "elife-1-fig1.jpg"  # no extension
    assert r.resolve("x_fig2.tif") == tmp_path / "x_fig2.jpg"  # .tif delivered as .jpg
    assert r.resolve("info:doi/10.1371/journal.pone.0056489.g001") == tmp_path / "pone.0056489.g001.jpg"
    assert r.resolve("fig3.gif") == tmp_path / "fig3.jpg"  # the full image beside a gif thumbnail
    assert r.resolve("only.gif") == tmp_path / "only.gif"
    assert r.resolve("upper") == tmp_path / "Upper.JPG"
    assert r.resolve("sub/inner") == tmp_path / "sub" / "inner.png"
    assert r.resolve("../outside.jpg") is None
    assert r.resolve("/etc/passwd") is None
    assert r.resolve("https://example.org/fig1.jpg") is None
    assert r.resolve("missing") is None
