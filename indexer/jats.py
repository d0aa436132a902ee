"""JATS / NLM article XML -> an :class:`ArticleRecord` with its :class:`FigureRecord` list.

The parser is locked down: no DTD is loaded, no entity is resolved, nothing is fetched from the
network. Documents that declare entities (``<!ENTITY`` in an internal DTD subset: billion laughs,
external/parameter entities) are refused with :class:`HostileXMLError`. Publishers' XML that
*uses* the standard character entities of the NLM/JATS DTDs (``&ast;``, ``&hairsp;``, ``&khgr;``
...) without declaring them is repaired by mapping each known name to its Unicode character (the
HTML5 table plus the ISO Greek table); an unknown name is refused with an error that names it.

What is extracted: article ids (pmcid, pmid, doi), title, journal, year (the earliest year among
the article's ``<pub-date>`` elements), license (label such as ``CC BY 4.0`` where derivable, URL,
statement), language, article type; every ``<fig>`` (in body, boxed text, appendices,
supplementary material, floats group; never ``<table-wrap>``) with id, label, caption title,
clean caption text, its graphic hrefs and the body sentences that cite it (``<xref
ref-type="fig">``), plus every media href in the document (to tell unreferenced files apart).
"""

from __future__ import annotations

import hashlib
import html.entities
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

MAX_XML_BYTES = 64 * 1024 * 1024
MAX_MENTIONS = 20
MAX_MENTION_CHARS = 1000


class JatsError(ValueError):
    """The document is not parseable article XML (the message says where and why)."""


class HostileXMLError(JatsError):
    """The document declares entities (billion laughs, external entities) and is refused."""


@dataclass
class FigureRecord:
    """One ``<fig>`` element: identity, caption, graphics and citing sentences."""

    fig_id: str | None  # the XML @id, when present
    ordinal: int  # 1-based position among the article's <fig> elements
    label: str | None
    caption_title: str | None
    caption: str  # title + paragraphs, clean single-spaced text ("" when there is no caption)
    hrefs: list[str]  # xlink:href of each <graphic> (one figure row per href)
    section: str  # body / boxed-text / app / supplementary / floats-group / back / front
    mentions: list[str] = field(default_factory=list)

    @property
    def key_base(self) -> str:
        """``fig id`` or ``fig-<ordinal>``: the first half of ``Figure.key``."""
        return self.fig_id or f"fig-{self.ordinal}"


@dataclass
class ArticleRecord:
    """Bibliographic metadata and figures of one article."""

    pmcid: str | None = None
    pmid: str | None = None
    doi: str | None = None
    title: str | None = None
    journal: str | None = None
    year: int | None = None
    license: str | None = None  # short label ("CC BY 4.0") or, failing that, the statement cut short
    license_url: str | None = None
    license_statement: str | None = None
    lang: str | None = None
    article_type: str | None = None
    figures: list[FigureRecord] = field(default_factory=list)
    media_hrefs: list[str] = field(default_factory=list)  # every graphic/media href in the document
    content_hash: str = ""  # sha256 of the XML bytes as given
    substituted_entities: list[str] = field(default_factory=list)  # DTD entity names mapped

    def key(self, fallback_stem: str) -> str:
        """The catalogue identity: ``pmcid:`` > ``doi:`` > ``pmid:`` > ``file:<stem>``."""
        if self.pmcid:
            return f"pmcid:{self.pmcid}"
        if self.doi:
            return f"doi:{self.doi.lower()}"
        if self.pmid:
            return f"pmid:{self.pmid}"
        return f"file:{fallback_stem}"


# --- entities -----------------------------------------------------------------------------------------

# ISO 8879 Greek letters (ISOgrk1) used by the NLM DTDs but absent from the HTML5 table.
_ISO_GREEK = dict(
    zip(
        ["agr", "Agr", "bgr", "Bgr", "ggr", "Ggr", "dgr", "Dgr", "egr", "Egr", "zgr", "Zgr", "eegr", "EEgr",
         "thgr", "THgr", "igr", "Igr", "kgr", "Kgr", "lgr", "Lgr", "mgr", "Mgr", "ngr", "Ngr", "xgr", "Xgr",
         "ogr", "Ogr", "pgr", "Pgr", "rgr", "Rgr", "sgr", "Sgr", "sfgr", "tgr", "Tgr", "ugr", "Ugr", "phgr",
         "PHgr", "khgr", "KHgr", "psgr", "PSgr", "ohgr", "OHgr"],
        "αΑβΒγΓδΔεΕζΖηΗθΘιΙκΚλΛμΜνΝξΞοΟπΠρΡσΣςτΤυΥφΦχΧψΨωΩ",
        strict=True,
    )
)
_XML_PREDEFINED = {"amp", "lt", "gt", "quot", "apos"}
_ENTITY_REF = re.compile(rb"&([A-Za-z][A-Za-z0-9._-]*);")


def character_for_entity(name: str) -> str | None:
    """The Unicode text of a standard DTD character entity name, or None when unknown."""
    value = html.entities.html5.get(name + ";")
    if value is not None:
        return value
    return _ISO_GREEK.get(name)


def _substitute_entities(data: bytes) -> tuple[bytes, list[str]]:
    """Replace undeclared character entity references by numeric references.

    Raises JatsError naming the first unknown entity.
    """
    used: set[str] = set()

    def repl(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode("ascii")
        if name in _XML_PREDEFINED:
            return match.group(0)
        text = character_for_entity(name)
        if text is None:
            line = data.count(b"\n", 0, match.start()) + 1
            raise JatsError(f"undefined entity '&{name};' at line {line} (not a standard character entity)")
        used.add(name)
        return "".join(f"&#{ord(ch)};" for ch in text).encode("ascii")

    return _ENTITY_REF.sub(repl, data), sorted(used)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        recover=False,
    )


def parse_xml(data: bytes) -> tuple[etree._Element, list[str]]:
    """Parse article XML safely; return the root element and the entity names that were mapped.

    Raises HostileXMLError for entity declarations and JatsError for anything unparseable.
    """
    if len(data) > MAX_XML_BYTES:
        raise JatsError(f"XML is {len(data)} bytes, over the {MAX_XML_BYTES}-byte limit")
    if b"<!ENTITY" in data:
        raise HostileXMLError(
            "XML declares DTD entities (<!ENTITY ...>); refused (entity expansion and external "
            "entities are never processed)"
        )
    fixed, used = _substitute_entities(data)
    try:
        root = etree.fromstring(fixed, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise JatsError(f"malformed XML: {exc}") from exc
    if root is None:
        raise JatsError("empty XML document")
    return root, used


# --- text ---------------------------------------------------------------------------------------------

_BLOCKS = {"p", "title", "label", "list-item", "def-item", "term", "def", "disp-quote", "caption"}
_SKIP = {"tex-math", "object-id", "graphic", "inline-graphic", "media"}
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")


def local(tag: object) -> str:
    """The local name of an element tag (namespace stripped); "" for comments and PIs."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _pieces(el: etree._Element, marks: dict[int, str] | None = None) -> Iterator[str]:
    name = local(el.tag)
    if name in _SKIP:
        pass
    elif name == "alternatives":
        kids = [k for k in el if local(k.tag) and local(k.tag) not in _SKIP]
        if kids:
            yield from _pieces(kids[0], marks)
    else:
        if marks is not None and id(el) in marks:
            yield marks[id(el)]
        block = name in _BLOCKS
        if block:
            yield " "
        if el.text:
            yield el.text
        for child in el:
            yield from _pieces(child, marks)
            if child.tail:
                yield child.tail
        if block:
            yield " "
        return
    # skipped elements still leave a separating space in place of their content
    yield " "


def clean(text: str) -> str:
    """Collapse whitespace and tidy spaces around punctuation."""
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _SPACE_AFTER_OPEN.sub(r"\1", text)


def flatten(el: etree._Element | None) -> str:
    """Readable text of an element: inline markup flattened, blocks spaced, whitespace normalised."""
    if el is None:
        return ""
    return clean("".join(_pieces(el)))


# --- metadata -----------------------------------------------------------------------------------------


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in el if local(c.tag) == name]


def _first(el: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        if el is None:
            return None
        found = _children(el, name)
        el = found[0] if found else None
    return el


def _descendants(el: etree._Element, name: str) -> Iterator[etree._Element]:
    for node in el.iter():
        if local(node.tag) == name:
            yield node


_CC_PATH = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)/(\d+(?:\.\d+)?)", re.I)
_CC_TEXT = [
    (re.compile(r"attribution[- ]non-?commercial[- ]no-?deriv", re.I), "CC BY-NC-ND"),
    (re.compile(r"attribution[- ]non-?commercial[- ]share-?alike", re.I), "CC BY-NC-SA"),
    (re.compile(r"attribution[- ]non-?commercial", re.I), "CC BY-NC"),
    (re.compile(r"attribution[- ]no-?deriv", re.I), "CC BY-ND"),
    (re.compile(r"attribution[- ]share-?alike", re.I), "CC BY-SA"),
    (re.compile(r"creative commons attribution", re.I), "CC BY"),
    (re.compile(r"\bCC0\b|public domain dedication", re.I), "CC0"),
    (re.compile(r"public domain", re.I), "Public Domain"),
]


def license_label(url: str | None, statement: str | None) -> str | None:
    """A short license label (``CC BY 4.0``, ``CC0 1.0``, ``Public Domain Mark 1.0``) or None."""
    if url:
        m = _CC_PATH.search(url)
        if m:
            kind, code, version = m.group(1).lower(), m.group(2).lower(), m.group(3)
            if kind == "publicdomain":
                return f"CC0 {version}" if code == "zero" else f"Public Domain Mark {version}"
            return f"CC {code.upper()} {version}"
    if statement:
        for pattern, label in _CC_TEXT:
            if pattern.search(statement):
                return label
    return None


def _license(meta: etree._Element | None, record: ArticleRecord) -> None:
    if meta is None:
        return
    permissions = _first(meta, "permissions")
    if permissions is None:
        return
    lic = next(_descendants(permissions, "license"), None)
    if lic is None:
        return
    url = lic.get(XLINK_HREF) or None
    ref = next(_descendants(lic, "license_ref"), None)
    if ref is not None and (ref.text or "").strip():
        url = url or (ref.text or "").strip()
    paragraphs = [flatten(p) for p in _descendants(lic, "license-p")]
    statement = " ".join(p for p in paragraphs if p) or None
    if not url and statement:
        m = re.search(r"https?://creativecommons\.org/\S+", statement)
        url = m.group(0).rstrip(").,;") if m else None
    record.license_url = url[:500] if url else None
    record.license_statement = statement
    label = license_label(url, statement)
    record.license = label or (statement[:200] if statement else None)


def _year(meta: etree._Element | None) -> int | None:
    if meta is None:
        return None
    years: list[int] = []
    for date in _children(meta, "pub-date"):
        year = _first(date, "year")
        text = (year.text or "").strip() if year is not None else ""
        if not text:
            text = (date.get("iso-8601-date") or "")[:4]
        if text.isdigit() and 1000 <= int(text) <= 9999:
            years.append(int(text))
    return min(years) if years else None


def _ids(meta: etree._Element | None, record: ArticleRecord) -> None:
    if meta is None:
        return
    for aid in _children(meta, "article-id"):
        kind = (aid.get("pub-id-type") or "").lower()
        value = " ".join((aid.text or "").split())
        if not value:
            continue
        if kind in ("pmc", "pmcid") and not record.pmcid:
            record.pmcid = value if value.upper().startswith("PMC") else f"PMC{value}"
        elif kind == "pmid" and not record.pmid:
            record.pmid = value
        elif kind == "doi" and not record.doi:
            record.doi = value


# --- figures ------------------------------------------------------------------------------------------

_SECTIONS = {
    "supplementary-material": "supplementary",
    "boxed-text": "boxed-text",
    "app": "app",
    "app-group": "app",
    "floats-group": "floats-group",
    "body": "body",
    "back": "back",
    "front": "front",
}
_SENTENCE_END = re.compile(r"[.!?][\"”')\]]*\s+(?=[A-Z(\[“\"])")
_ABBREVIATIONS = {"fig", "figs", "al", "e.g", "i.e", "eg", "ie", "vs", "ref", "refs", "approx", "ca", "no", "cf",
                  "resp", "suppl", "eq", "eqs", "sp", "spp", "dr", "st", "mr", "ms", "vol", "p", "pp"}
_MARK = "\u0000"


def _sentence_ends(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the sentence boundaries in ``text`` (abbreviations are not ends)."""
    spans = []
    for m in _SENTENCE_END.finditer(text):
        word = text[: m.start()].rsplit(None, 1)[-1] if text[: m.start()].strip() else ""
        if word.lower().lstrip("([") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        spans.append((m.start(), m.end()))
    return spans


def _section(fig: etree._Element) -> str:
    for anc in fig.iterancestors():
        name = _SECTIONS.get(local(anc.tag))
        if name:
            return name
    return "body"


def _graphics(fig: etree._Element) -> list[str]:
    """Hrefs of a fig's <graphic>s; inside <alternatives> only the first one counts."""
    hrefs: list[str] = []
    seen_alternatives: set[int] = set()
    for g in _descendants(fig, "graphic"):
        parent = g.getparent()
        if parent is not None and local(parent.tag) == "alternatives":
            if id(parent) in seen_alternatives:
                continue
            seen_alternatives.add(id(parent))
        href = (g.get(XLINK_HREF) or "").strip()
        if href:
            hrefs.append(href)
    return hrefs


def _mentions(root: etree._Element, figures: list[FigureRecord], fig_groups: dict[str, list[str]]) -> None:
    by_id = {f.fig_id: f for f in figures if f.fig_id}
    body = next((e for e in root.iter() if local(e.tag) in ("body",)), None)
    if body is None or not by_id:
        return
    for p in _descendants(body, "p"):
        if any(local(a.tag) in ("fig", "table-wrap", "caption") for a in p.iterancestors()):
            continue
        xrefs = [x for x in _descendants(p, "xref") if x.get("ref-type") == "fig" and x.get("rid")]
        if not xrefs:
            continue
        # only the xrefs that belong to this <p> itself, not to a nested <p>
        xrefs = [x for x in xrefs if next(a for a in x.iterancestors() if local(a.tag) == "p") is p]
        for x in xrefs:
            targets: list[str] = []
            for rid in (x.get("rid") or "").split():
                targets.extend(fig_groups.get(rid, [rid]))
            figs = [by_id[t] for t in targets if t in by_id]
            if not figs:
                continue
            text = "".join(_pieces(p, {id(x): _MARK}))
            at = text.find(_MARK)
            before, after = text[:at], text[at + 1 :]
            start = max((end for _, end in _sentence_ends(before)), default=0)
            ends = _sentence_ends(after)
            sentence = before[start:] + (after[: ends[0][0] + 1] if ends else after)
            sentence = clean(sentence.replace(_MARK, ""))[:MAX_MENTION_CHARS]
            for fig in figs:
                if sentence and sentence not in fig.mentions and len(fig.mentions) < MAX_MENTIONS:
                    fig.mentions.append(sentence)


def _figures(root: etree._Element) -> tuple[list[FigureRecord], dict[str, list[str]]]:
    figures: list[FigureRecord] = []
    groups: dict[str, list[str]] = {}
    for fig in _descendants(root, "fig"):
        caption = _first(fig, "caption")
        title_el = _first(caption, "title")
        title = flatten(title_el) or None
        label = flatten(_first(fig, "label")) or None
        parts: list[str] = []
        if caption is not None:
            parts.append(caption.text or "")
            for child in caption:
                if child is not title_el:
                    parts.append(flatten(child))
                parts.append(child.tail or "")
        body = clean(" ".join(parts))
        title_part = title + "." if title and body and title[-1] not in ".!?:;" else title or ""
        text = clean(f"{title_part} {body}")
        figures.append(
            FigureRecord(
                fig_id=(fig.get("id") or "").strip() or None,
                ordinal=len(figures) + 1,
                label=label,
                caption_title=title,
                caption=text,
                hrefs=_graphics(fig),
                section=_section(fig),
            )
        )
    for group in _descendants(root, "fig-group"):
        gid = group.get("id")
        if gid:
            groups[gid] = [f.get("id") or "" for f in _descendants(group, "fig")]
    return figures, groups


def parse_jats(data: bytes) -> ArticleRecord:
    """Parse article XML bytes into an :class:`ArticleRecord` (see the module docstring).

    Raises HostileXMLError / JatsError on refused or malformed input.
    """
    root, used = parse_xml(data)
    if local(root.tag) != "article":
        raise JatsError(f"root element is <{local(root.tag)}>, not <article>: not JATS article XML")
    record = ArticleRecord(content_hash=hashlib.sha256(data).hexdigest(), substituted_entities=used)
    front = _first(root, "front")
    meta = _first(front, "article-meta")
    journal_meta = _first(front, "journal-meta")
    _ids(meta, record)
    record.title = flatten(_first(meta, "title-group", "article-title")) or None
    if journal_meta is not None:
        jt = next(_descendants(journal_meta, "journal-title"), None)
        record.journal = flatten(jt) or None
        if record.journal is None:
            jid = next((j for j in _children(journal_meta, "journal-id")), None)
            record.journal = flatten(jid) or None
    record.year = _year(meta)
    _license(meta, record)
    record.lang = root.get(XML_LANG) or None
    record.article_type = root.get("article-type") or None
    record.figures, groups = _figures(root)
    _mentions(root, record.figures, groups)
    for name in ("graphic", "inline-graphic", "media", "supplementary-material"):
        for el in _descendants(root, name):
            href = (el.get(XLINK_HREF) or "").strip()
            if href:
                record.media_hrefs.append(href)
    return record


def parse_jats_file(path: Path) -> ArticleRecord:
    """Read and parse one XML file (see :func:`parse_jats`)."""
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise JatsError(f"{path.name}: XML is {size} bytes, over the {MAX_XML_BYTES}-byte limit")
    return parse_jats(path.read_bytes())
