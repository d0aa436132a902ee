"""The one rule for a job's input files (issue 17, finding 5): only under the data home's
``uploads/`` and ``downloads/`` folders, checked after following links."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.job_inputs import UnsafeJobInput, check_job_path, check_job_paths, first_violation


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for name in ("uploads/abc", "downloads", "media"):
        (tmp_path / "home" / name).mkdir(parents=True)
    return tmp_path / "home"


def test_files_under_uploads_and_downloads_pass(home: Path) -> None:
    up = home / "uploads" / "abc" / "PMC1.tar.gz"
    down = home / "downloads" / "PMC2.tar.gz"
    assert check_job_paths([str(up), str(down)], home) == [up.resolve(), down.resolve()]
    assert check_job_paths(None, home) == []
    assert first_violation({"paths": [str(up)]}, home) is None
    assert first_violation({"pmcids": ["PMC1"]}, home) is None


@pytest.mark.parametrize(
    "raw",
    [
        "/etc/passwd",
        "{home}/catalogue.db",
        "{home}/media/x.jpg",
        "{home}/uploads",  # the folder itself
        "{home}/uploads/../catalogue.db",
        "{home}/uploads/abc/../../.env",
        "uploads/abc/PMC1.tar.gz",  # relative: resolved against whatever the cwd is
        "",
        "{home}/uploads/abc/x\x00.tar.gz",
    ],
)
def test_anything_else_is_refused(home: Path, raw: str) -> None:
    with pytest.raises(UnsafeJobInput):
        check_job_path(raw.format(home=home), home)


def test_links_are_followed_before_the_check(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (home / "uploads" / "abc" / "link.tar.gz").symlink_to(secret)
    (home / "uploads" / "out").symlink_to(tmp_path)
    for raw in (home / "uploads" / "abc" / "link.tar.gz", home / "uploads" / "out" / "secret.txt"):
        with pytest.raises(UnsafeJobInput, match="uploads/ and downloads/"):
            check_job_path(str(raw), home)


def test_malformed_payloads_are_refused_without_echoing_them(home: Path) -> None:
    for payload in ([1, 2], {"paths": "x"}, {"paths": [7]}, {"paths": ["/x"] * 1001}):
        why = first_violation(payload, home)
        assert why is not None and len(why) < 400
    long_name = "/" + "a" * 100_000
    with pytest.raises(UnsafeJobInput) as info:
        check_job_path(long_name, home)
    assert len(str(info.value)) < 400
