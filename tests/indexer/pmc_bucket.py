"""A small PMC Cloud Service bucket in the real layout, on a real S3 API (moto's server) at 127.0.0.1.

Built from ``../shared/data/jats/`` (each article gets a PMCID, inserted as PMC's own XML carries
it): ``PMC<n>.<v>/`` prefixes holding the XML, its media files, a supplementary file, ``.txt`` and
``.json``; ``metadata/PMC<n>.<v>.json`` with ``s3://...?md5=`` URLs; a public-read bucket policy
(reads are anonymous, as in the real bucket); an S3 Inventory of ``metadata/`` per day
(``manifest.json`` + headerless gzipped CSV). boto3 is used only here, to fill the bucket.

Day 1 (``2026-11-29T01-00Z``): :data:`DAY1` articles; PMC1000005 is retracted from the start,
PMC1000006 has a media file whose md5 in the metadata is wrong, PMC1000008 was last modified
before 2026-11-01, PMC1000003 is CC BY-NC-ND.
Day 2 (``2026-11-30T01-00Z``): PMC1000001.1 is retracted (its metadata is rewritten: a changed
ETag), PMC1000004.1's metadata changes (a changed ETag, same files), PMC1000007.1 is new.

``python tests/indexer/pmc_bucket.py`` stands the bucket up and runs the CLI against it (the
evidence the issue asks for).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUCKET = "pmc-oa-opendata"
INVENTORY = "inventory-reports/pmc-oa-opendata/metadata"
DAY1, DAY2 = "2026-11-29T01-00Z", "2026-11-30T01-00Z"


@dataclass(frozen=True)
class Spec:
    """One article version of the test bucket."""

    pmcid: str
    version: int
    folder: str  # under shared/data/jats/
    license_code: str | None = "CC BY"
    modified: str = "2026-11-28T10:00:00.000Z"
    retracted: bool = False
    bad_md5: bool = False


ARTICLES = [
    Spec("PMC1000001", 1, "elife-19405"),
    Spec("PMC1000002", 1, "elife-00353", modified="2026-11-20T10:00:00.000Z"),
    Spec("PMC1000002", 2, "elife-00353"),
    Spec("PMC1000003", 1, "pone.0056489", license_code="CC BY-NC-ND"),
    Spec("PMC1000004", 1, "elife-54296", license_code="CC0"),
    Spec("PMC1000005", 1, "2236-8906-hoehnea-49-e1112020", retracted=True),
    Spec("PMC1000006", 1, "elife-32671", bad_md5=True),
    Spec("PMC1000008", 1, "pone.0038869", modified="2026-10-15T10:00:00.000Z"),
]
NEW_ON_DAY2 = Spec("PMC1000007", 1, "2024.01.24.24301711", modified="2026-11-29T12:00:00.000Z")


def with_pmcid(xml: bytes, pmcid: str) -> bytes:
    """The XML with ``<article-id pub-id-type="pmc">`` first in ``<article-meta>`` (as PMC's XML has)."""
    tag = f'<article-id pub-id-type="pmc">{pmcid}</article-id>'.encode()
    out, n = re.subn(rb"(<article-meta(?:\s[^>]*)?>)", lambda m: m.group(1) + tag, xml, count=1)
    assert n == 1, "no <article-meta>"
    return out


@dataclass
class Bucket:
    """The running server and what it holds."""

    endpoint: str  # http://127.0.0.1:PORT
    client: Any  # boto3 S3 client (test side only)
    jats: Path
    inventory_rows: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (modified, etag)
    captions: dict[str, str] = field(default_factory=dict)  # pmcid -> a word-rich figure caption

    @property
    def base_url(self) -> str:
        """Path-style bucket URL the client is configured with."""
        return f"{self.endpoint}/{BUCKET}"

    def put(self, key: str, body: bytes) -> str:
        """Store one object; return its ETag (no quotes)."""
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body)
        return str(self.client.head_object(Bucket=BUCKET, Key=key)["ETag"]).strip('"')

    def add_version(self, spec: Spec, **changes: Any) -> None:
        """Upload one version's files and its metadata (``changes`` override metadata fields;
        ``_modified`` sets its inventory LastModifiedDate)."""
        modified = changes.pop("_modified", spec.modified)
        label = f"{spec.pmcid}.{spec.version}"
        src = self.jats / spec.folder
        xml = with_pmcid((src / f"{spec.folder}.nxml").read_bytes(), spec.pmcid)
        s3 = f"s3://{BUCKET}/{label}"
        self.put(f"{label}/{label}.xml", xml)
        self.put(f"{label}/{label}.txt", b"plain text of " + label.encode())
        media = []
        for i, path in enumerate(sorted(p for p in src.iterdir() if p.suffix != ".nxml")):
            data = path.read_bytes()
            self.put(f"{label}/{path.name}", data)
            md5 = hashlib.md5(data).hexdigest()
            if spec.bad_md5 and i == 0:
                md5 = hashlib.md5(data + b"tampered").hexdigest()
            media.append(f"{s3}/{path.name}?md5={md5}")
        supplement = f"{spec.folder}-s001.xlsx".encode()
        self.put(f"{label}/{spec.folder}-s001.xlsx", supplement)
        media.append(f"{s3}/{spec.folder}-s001.xlsx?md5={hashlib.md5(supplement).hexdigest()}")
        meta: dict[str, Any] = {
            "pmcid": spec.pmcid,
            "version": spec.version,
            "pmid": None,
            "doi": None,
            "mid": None,
            "title": f"article {label}",
            "citation": f"Test J. 2026; {label}",
            "is_pmc_openaccess": True,
            "is_manuscript": False,
            "is_historical_ocr": False,
            "is_retracted": spec.retracted,
            "license_code": spec.license_code,
            "xml_url": f"{s3}/{label}.xml?md5={hashlib.md5(xml).hexdigest()}",
            "pdf_url": None,
            "text_url": f"{s3}/{label}.txt",
            "media_urls": media,
        }
        meta.update(changes)
        body = json.dumps(meta, indent=2).encode()
        self.put(f"{label}/{label}.json", body)
        key = f"metadata/{label}.json"
        self.inventory_rows[key] = (modified, self.put(key, body))

    def write_inventory(self, name: str) -> None:
        """Publish an S3 Inventory of ``metadata/`` as of now under ``<INVENTORY>/<name>/``."""
        buf = io.StringIO()
        for key, (modified, etag) in sorted(self.inventory_rows.items()):
            buf.write(f'"{BUCKET}","{key}","{modified}","{etag}"\n')
        data = gzip.compress(buf.getvalue().encode(), mtime=0)
        data_key = f"{INVENTORY}/data/{hashlib.md5(name.encode()).hexdigest()}.csv.gz"
        self.put(data_key, data)
        manifest = {
            "sourceBucket": BUCKET,
            "destinationBucket": f"arn:aws:s3:::{BUCKET}",
            "version": "2016-11-30",
            "creationTimestamp": "1764464400000",
            "fileFormat": "CSV",
            "fileSchema": "Bucket, Key, LastModifiedDate, ETag",
            "files": [{"key": data_key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()}],
        }
        self.put(f"{INVENTORY}/{name}/manifest.json", json.dumps(manifest).encode())

    def day1(self) -> None:
        """The bucket as of the first inventory."""
        for spec in ARTICLES:
            self.add_version(spec)
        self.write_inventory(DAY1)

    def day2(self) -> None:
        """The changes of the second day, then its inventory."""
        first = ARTICLES[0]
        self.add_version(first, is_retracted=True, _modified="2026-11-29T09:00:00.000Z")
        self.add_version(ARTICLES[4], citation="Test J. 2026; corrected", _modified="2026-11-29T09:30:00.000Z")
        self.add_version(NEW_ON_DAY2)
        self.write_inventory(DAY2)


@contextmanager
def serve_bucket(jats: Path) -> Iterator[Bucket]:
    """Start moto's S3 server on 127.0.0.1 (a free port) with an empty public-read bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    # moto's backends are per process: start from an empty state whatever an earlier server left
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    client.create_bucket(Bucket=BUCKET)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"},
            {"Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        ],
    }
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    try:
        yield Bucket(endpoint=endpoint, client=client, jats=jats)
    finally:
        server.stop()


def _demo() -> None:  # pragma: no cover - the evidence script
    """Stand the bucket up, run ``biomedsearch fetch`` against it, search before / after."""
    import os
    import subprocess
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[2]
    jats = Path(os.environ.get("BIOMEDSEARCH_SHARED_DATA", repo.parent / "shared" / "data")) / "jats"
    home = Path(tempfile.mkdtemp(prefix="pmc-demo-"))
    with serve_bucket(jats) as bucket:
        bucket.day1()
        env = {**os.environ, "BIOMEDSEARCH_DATA_HOME": str(home), "BIOMEDSEARCH_PMC_CLOUD_URL": bucket.base_url,
               "BIOMEDSEARCH_PMC_REQUESTS_PER_SECOND": "10", "PYTHONPATH": str(repo)}

        def cli(*args: str) -> None:
            print(f"\n$ biomedsearch {' '.join(args)}", flush=True)
            done = subprocess.run([sys.executable, "-m", "app.cli", *args, "--no-progress"], env=env,
                                  capture_output=True, text=True)
            print((done.stdout + done.stderr).rstrip(), f"\n[exit {done.returncode}]", flush=True)

        def search(when: str) -> None:
            from fastapi.testclient import TestClient

            from app.config import Settings
            from app.main import create_app

            settings = Settings(_env_file=None, data_home=home, run_worker=False, text_model=None,  # type: ignore[call-arg]
                                model=None, use_gpu=False)
            with TestClient(create_app(settings)) as client:
                for q in ("invagination membrane",):
                    hits = client.get("/api/search", params={"q": q, "mode": "lexical"}).json()["results"]
                    ids = sorted({h["article"]["pmcid"] for h in hits})
                    print(f"search {when}: q={q!r} mode=lexical -> {len(hits)} figure(s) from {ids}")

        print(f"moto S3 at {bucket.endpoint}; bucket {BUCKET}; a ListObjectsV2 of the bucket's top level:")
        with urllib.request.urlopen(f"{bucket.base_url}?list-type=2&delimiter=/") as resp:
            listing = resp.read().decode()
        print(" ", re.findall(r"<Prefix>([^<]+)</Prefix>", listing))
        cli("fetch", "PMC1000001", "PMC1000002.1")
        cli("fetch", "--since", "2026-11-01", "--license", "CC BY", "--license", "CC0")
        search("before day 2")
        bucket.day2()
        print(f"\n-- day 2: {DAY2} inventory published (PMC1000001 retracted, PMC1000004 changed, PMC1000007 new)")
        cli("fetch", "--since", "2026-11-01", "--license", "CC BY", "--license", "CC0")
        cli("fetch", "--since", "2026-11-01", "--license", "CC BY", "--license", "CC0")
        search("after day 2")


if __name__ == "__main__":  # pragma: no cover
    _demo()
