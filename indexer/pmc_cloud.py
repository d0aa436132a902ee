"""The layout of the PMC Cloud Service bucket (``pmc-oa-opendata``) and a client that reads it.

What the bucket holds (NCBI's bucket README and pmc.ncbi.nlm.nih.gov/tools/pmcaws):

- one prefix per article version, ``PMC<n>.<v>/``, with ``PMC<n>.<v>.xml`` (JATS), ``.txt``,
  ``.pdf``, ``.json`` and every media / supplementary file individually;
- ``metadata/PMC<n>.<v>.json``: the version's metadata (:class:`CloudMetadata`), whose ``s3://``
  file URLs carry ``?md5=<hex>``;
- anonymous ListObjectsV2 over HTTPS (``?list-type=2&prefix=PMC<n>.&delimiter=/`` lists an
  article's versions as common prefixes);
- a daily S3 Inventory of ``metadata/`` under ``inventory-reports/pmc-oa-opendata/metadata/``:
  ``<YYYY-MM-DDTHH-MMZ>/manifest.json`` (``fileFormat`` CSV, ``fileSchema``, ``files``: key, size,
  MD5checksum) pointing to headerless gzipped CSV files (Bucket, Key, LastModifiedDate, ETag),
  kept 30 days.

:class:`PmcCloud` turns those into typed values; the HTTP itself (politeness, single host, sizes,
md5) is :class:`indexer.pmc_client.PmcHttp`.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lxml import etree

from indexer.pmc_client import HttpOptions, NotFound, PmcError, PmcHttp

INVENTORY_PREFIX = "inventory-reports/pmc-oa-opendata/metadata/"
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_ID = re.compile(r"^(?:PMC)?(\d{1,12})(?:\.(\d{1,4}))?$", re.IGNORECASE)
_METADATA_KEY = re.compile(r"^metadata/(PMC\d{1,12})\.(\d{1,4})\.json$")
_INVENTORY_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:T\d{2}-\d{2}Z)?$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_LIST_PAGES = 1000  # ListObjectsV2 pages followed at most per listing


def parse_article_id(value: str) -> tuple[str, int | None]:
    """``"PMC123"`` -> ``("PMC123", None)``; ``"pmc123.2"`` / ``"123.2"`` -> ``("PMC123", 2)``.

    Raises PmcError for anything else.
    """
    m = _ID.match(value.strip())
    if not m:
        raise PmcError(f"{value!r} is not a PMCID (expected PMC followed by digits, optionally .VERSION)")
    return f"PMC{int(m.group(1))}", int(m.group(2)) if m.group(2) else None


def metadata_key(pmcid: str, version: int) -> str:
    """``metadata/PMC<n>.<v>.json``."""
    return f"metadata/{pmcid}.{version}.json"


def parse_metadata_key(key: str) -> tuple[str, int] | None:
    """``metadata/PMC123.2.json`` -> ``("PMC123", 2)``; None for any other key."""
    m = _METADATA_KEY.match(key)
    return (m.group(1), int(m.group(2))) if m else None


@dataclass(frozen=True)
class S3File:
    """One file of an article version: its key in the bucket, its file name and md5."""

    key: str
    name: str
    md5: str | None


def parse_s3_url(url: str, bucket: str | None) -> S3File:
    """``s3://pmc-oa-opendata/PMC1.1/f.jpg?md5=...`` -> S3File; refuses another bucket, unsafe
    file names and malformed md5 values (PmcError)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise PmcError(f"{url!r} is not an s3:// URL")
    if bucket is not None and parts.netloc != bucket:
        raise PmcError(f"{url!r} points into bucket {parts.netloc!r}, not {bucket!r}; refused")
    key = unquote(parts.path.lstrip("/"))
    pure = PurePosixPath(key)
    if not key or ".." in pure.parts or pure.is_absolute() or not _SAFE_FILE.match(pure.name):
        raise PmcError(f"{url!r}: unsafe object key {key!r}")
    md5s = parse_qs(parts.query).get("md5") or []
    md5 = md5s[0] if md5s else None
    if md5 is not None and not _MD5.match(md5):
        raise PmcError(f"{url!r}: malformed md5 {md5!r}")
    return S3File(key=key, name=pure.name, md5=md5.lower() if md5 else None)


@dataclass(frozen=True)
class CloudMetadata:
    """``metadata/PMC<n>.<v>.json``: what the client uses of it (``raw`` keeps all of it)."""

    pmcid: str
    version: int
    pmid: str | None
    doi: str | None
    title: str | None
    license_code: str | None
    is_retracted: bool
    is_pmc_openaccess: bool
    xml: S3File
    media: tuple[S3File, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """Its metadata key (``metadata/PMC<n>.<v>.json``)."""
        return metadata_key(self.pmcid, self.version)

    @property
    def label(self) -> str:
        """``PMC<n>.<v>``."""
        return f"{self.pmcid}.{self.version}"


def parse_metadata(data: bytes, bucket: str | None) -> CloudMetadata:
    """Validate and read a metadata JSON (PmcError when it is not one)."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise PmcError(f"metadata is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise PmcError("metadata is not a JSON object")
    pmcid, version = parse_article_id(str(raw.get("pmcid") or ""))
    raw_version = raw.get("version")
    if version is None:
        if not isinstance(raw_version, int | str) or not str(raw_version).isdigit():
            raise PmcError(f"{pmcid}: metadata has no version")
        version = int(raw_version)
    xml_url = raw.get("xml_url")
    if not isinstance(xml_url, str):
        raise PmcError(f"{pmcid}.{version}: metadata has no xml_url")
    media_urls = raw.get("media_urls") or []
    if not isinstance(media_urls, list) or not all(isinstance(u, str) for u in media_urls):
        raise PmcError(f"{pmcid}.{version}: media_urls is not a list of URLs")

    def text(name: str) -> str | None:
        value = raw.get(name)
        return str(value) if value not in (None, "") else None

    return CloudMetadata(
        pmcid=pmcid,
        version=version,
        pmid=text("pmid"),
        doi=text("doi"),
        title=text("title"),
        license_code=text("license_code"),
        is_retracted=raw.get("is_retracted") is True,
        is_pmc_openaccess=raw.get("is_pmc_openaccess") is not False,
        xml=parse_s3_url(xml_url, bucket),
        media=tuple(parse_s3_url(u, bucket) for u in media_urls),
        raw=raw,
    )


def graphic_hrefs(xml: bytes) -> list[str]:
    """The ``xlink:href`` of every ``<graphic>`` and ``<inline-graphic>`` (document order, once each;
    entity-free, no network)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=True)
    root = etree.fromstring(xml, parser=parser)
    if root is None:
        raise PmcError("the article XML is empty or unreadable")
    hrefs: list[str] = []
    for el in root.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag.rsplit("}", 1)[-1] in ("graphic", "inline-graphic"):
            href = (el.get(_XLINK_HREF) or "").strip()
            if href and href not in hrefs:
                hrefs.append(href)
    return hrefs


def _href_name(href: str) -> str:
    """The file name an href stands for (a PLOS DOI URI names ``pone.0056489.g001``)."""
    last = href.replace("\\", "/").rsplit("/", 1)[-1]
    if href.lower().startswith("info:doi/") and "journal." in last:
        last = last.split("journal.", 1)[1]
    return last


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def match_media(hrefs: list[str], media: tuple[S3File, ...]) -> tuple[list[S3File], list[str]]:
    """The media files the hrefs name (by file name, with its extension or without one), and the
    hrefs no media file matches. An exact name wins; then a media file whose stem is the href
    (no extension); then one whose stem is the href's stem (``fig1.tif`` -> ``fig1.jpg``)."""
    by_name = {m.name.lower(): m for m in media}
    by_stem: dict[str, S3File] = {}
    for m in media:
        by_stem.setdefault(_stem(m.name).lower(), m)
    chosen: list[S3File] = []
    unmatched: list[str] = []
    for href in hrefs:
        name = _href_name(href).lower()
        found = by_name.get(name) or by_stem.get(name) or by_stem.get(_stem(name))
        if found is None:
            unmatched.append(href)
        elif found not in chosen:
            chosen.append(found)
    return chosen, unmatched


@dataclass(frozen=True)
class InventoryRow:
    """One line of the metadata inventory."""

    key: str
    last_modified: dt.datetime
    etag: str


@dataclass(frozen=True)
class InventoryFile:
    """One gzipped CSV file a manifest lists."""

    key: str
    size: int | None
    md5: str | None


@dataclass(frozen=True)
class Inventory:
    """A ``manifest.json``: its date folder, column names and data files."""

    name: str  # the date folder, e.g. 2026-11-30T01-00Z
    columns: list[str]
    files: list[InventoryFile]


def _parse_time(value: str) -> dt.datetime:
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise PmcError(f"inventory: bad LastModifiedDate {value!r}") from exc
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def bucket_name(base_url: str) -> str | None:
    """The bucket a base URL names: ``bucket.s3...amazonaws.com`` or ``host/bucket``."""
    parts = urlsplit(base_url)
    path = parts.path.strip("/")
    if path:
        return path.split("/", 1)[0]
    host = parts.hostname or ""
    return host.split(".s3", 1)[0] if ".s3" in host else None


class PmcCloud:
    """Reads the bucket's layout: versions, metadata, media, inventories (see the module docstring)."""

    def __init__(self, base_url: str, options: HttpOptions | None = None) -> None:
        self.http = PmcHttp(base_url, options)
        self.bucket = bucket_name(base_url)

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def __enter__(self) -> PmcCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- listing -------------------------------------------------------------------------------------

    def list_prefixes(self, prefix: str) -> list[str]:
        """The common prefixes under ``prefix`` (ListObjectsV2 with ``delimiter=/``, every page)."""
        found: list[str] = []
        token: str | None = None
        for _ in range(_LIST_PAGES):
            params = {"list-type": "2", "prefix": prefix, "delimiter": "/"}
            if token:
                params["continuation-token"] = token
            body, _ = self.http.get("", params=params)
            try:
                root = etree.fromstring(body, parser=etree.XMLParser(resolve_entities=False, no_network=True))
            except etree.XMLSyntaxError as exc:
                raise PmcError(f"listing {prefix!r}: malformed XML ({exc})") from exc
            found += [p.text or "" for p in root.iter(f"{_S3_NS}Prefix") if p.getparent() is not None
                      and p.getparent().tag == f"{_S3_NS}CommonPrefixes"]
            truncated = (root.findtext(f"{_S3_NS}IsTruncated") or "false").lower() == "true"
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if not truncated or not token:
                return found
        raise PmcError(f"listing {prefix!r}: more than {_LIST_PAGES} pages")

    def versions(self, pmcid: str) -> list[int]:
        """The article's versions in the bucket, ascending (empty when it has none)."""
        out = []
        for prefix in self.list_prefixes(f"{pmcid}."):
            rest = prefix[len(pmcid) + 1 :].rstrip("/")
            if rest.isdigit():
                out.append(int(rest))
        return sorted(out)

    def resolve(self, ident: str) -> tuple[str, int]:
        """``PMC123`` -> its latest version; ``PMC123.2`` -> itself. NotFound when absent."""
        pmcid, version = parse_article_id(ident)
        if version is not None:
            return pmcid, version
        versions = self.versions(pmcid)
        if not versions:
            raise NotFound(f"{pmcid}: no version in the PMC Cloud Service")
        return pmcid, versions[-1]

    # --- objects -------------------------------------------------------------------------------------

    def metadata(self, pmcid: str, version: int) -> tuple[CloudMetadata, str]:
        """The version's metadata and the ETag of its metadata object."""
        body, headers = self.http.get(metadata_key(pmcid, version))
        meta = parse_metadata(body, self.bucket)
        if (meta.pmcid, meta.version) != (pmcid, version):
            raise PmcError(f"{metadata_key(pmcid, version)} describes {meta.label}")
        return meta, (headers.get("etag") or "").strip('"')

    # --- inventory -----------------------------------------------------------------------------------

    def inventories(self) -> list[str]:
        """The inventory date folders present, oldest first."""
        names = [p[len(INVENTORY_PREFIX) :].rstrip("/") for p in self.list_prefixes(INVENTORY_PREFIX)]
        return sorted(n for n in names if _INVENTORY_DATE.match(n))

    def inventory(self, which: str = "latest") -> Inventory:
        """The manifest of ``which``: ``latest`` (the newest date folder) or a date folder / date
        (``2026-11-30`` picks the newest folder of that day). NotFound when there is none."""
        names = self.inventories()
        if which != "latest":
            names = [n for n in names if n == which or n.startswith(which + "T")]
        if not names:
            raise NotFound(f"no inventory {which!r} under {INVENTORY_PREFIX}")
        name = names[-1]
        body, _ = self.http.get(f"{INVENTORY_PREFIX}{name}/manifest.json")
        try:
            manifest = json.loads(body)
            if str(manifest.get("fileFormat", "")).upper() != "CSV":
                raise PmcError(f"inventory {name}: fileFormat {manifest.get('fileFormat')!r}, expected CSV")
            columns = [c.strip() for c in str(manifest["fileSchema"]).split(",")]
            files = [
                InventoryFile(str(f["key"]), int(f["size"]) if "size" in f else None, f.get("MD5checksum"))
                for f in manifest["files"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PmcError(f"inventory {name}: malformed manifest.json ({exc})") from exc
        for needed in ("Key", "LastModifiedDate", "ETag"):
            if needed not in columns:
                raise PmcError(f"inventory {name}: fileSchema lacks {needed}")
        return Inventory(name=name, columns=columns, files=files)

    def inventory_rows(self, inventory: Inventory, workdir: Path) -> Iterator[InventoryRow]:
        """Every row of the inventory's CSV files, streamed: each file is downloaded into
        ``workdir`` (resumable, checked against the manifest's MD5checksum and size) and read
        line by line."""
        col = {name: i for i, name in enumerate(inventory.columns)}
        for item in inventory.files:
            name = PurePosixPath(item.key).name
            if not _SAFE_FILE.match(name):
                raise PmcError(f"inventory {inventory.name}: unsafe file name {item.key!r}")
            path = workdir / name
            self.http.download(item.key, path, md5=item.md5)
            if item.size is not None and path.stat().st_size != item.size:
                raise PmcError(f"inventory file {item.key}: {path.stat().st_size} bytes, manifest says {item.size}")
            try:
                with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
                    for row in csv.reader(fh):
                        if len(row) < len(col):
                            continue
                        yield InventoryRow(
                            key=unquote(row[col["Key"]]),
                            last_modified=_parse_time(row[col["LastModifiedDate"]]),
                            etag=row[col["ETag"]].strip('"'),
                        )
            except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
                raise PmcError(f"inventory file {item.key}: not gzipped UTF-8 CSV ({exc})") from exc
