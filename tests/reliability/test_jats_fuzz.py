"""Property-based fuzzing of the JATS parser: whatever the bytes, ``parse_jats`` either returns an
:class:`ArticleRecord` or raises :class:`JatsError` (``HostileXMLError`` is one), never anything else,
and never expands an entity or reads a file."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_fixtures import article_xml

from indexer.jats import ArticleRecord, JatsError, parse_jats

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEED = article_xml(
    4242,
    3,
    extra_body='<boxed-text><fig id="b1"><caption><p>Boxed &alpha; &amp; <italic>x</italic></p></caption>'
    '<graphic xlink:href="b1.jpg"/></fig></boxed-text><xref ref-type="fig" rid="f1">Fig 1</xref>',
)
FRAGMENTS = [
    b"<!ENTITY a 'b'>",
    b'<!DOCTYPE article [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE article SYSTEM "http://127.0.0.1:9/x.dtd">',
    b"&x;",
    b"&nbsp;",
    b"&#0;",
    b"&#x110000;",
    b"&unknownentity;",
    b"<![CDATA[",
    b"]]>",
    b"<?xml-stylesheet href='x'?>",
    b"<!--",
    b"-->",
    b"<fig>",
    b"</fig>",
    b'<graphic xlink:href="../../etc/passwd"/>',
    b'<graphic xlink:href=""/>',
    b'<article-id pub-id-type="pmc">',
    b"<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='/etc/passwd'/>",
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b'<?xml version="1.0" encoding="UTF-16"?>',
    b"<" * 50,
    b"<a>" * 300,
    "\u202e\ud7ff\ufffd".encode(),
]


def _check(data: bytes) -> None:
    try:
        record = parse_jats(data)
    except JatsError:
        return
    assert isinstance(record, ArticleRecord)
    assert record.title is None or isinstance(record.title, str)
    assert "root:" not in (record.title or "")  # /etc/passwd never leaks into the record
    for fig in record.figures:
        assert isinstance(fig.caption, str)
        assert "root:x:0:0" not in fig.caption


@FUZZ
@given(st.binary(max_size=4000))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The seed article with a few random edits: flips, cuts, deletions, hostile insertions."""
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "fragment"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 200))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from(FRAGMENTS))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_articles(data: bytes) -> None:
    _check(data)


_TAGS = ["article", "front", "article-meta", "body", "sec", "p", "fig", "caption", "title", "label", "graphic",
         "boxed-text", "app", "supplementary-material", "table-wrap", "xref", "italic", "sup", "fig-group",
         "article-id", "pub-date", "year", "license", "journal-title", "alternatives"]  # fmt: skip
_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30).map(
    lambda s: s.replace("&", "&amp;").replace("<", "&lt;")
)


@st.composite
def element(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(st.sampled_from(_TAGS))
    attrs = ""
    if draw(st.booleans()):
        attrs += f' id="{draw(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,8}", fullmatch=True))}"'
    if tag == "graphic" or draw(st.integers(0, 5)) == 0:
        href = draw(st.sampled_from(["g1", "g1.jpg", "../x", "/etc/passwd", "http://x/y", "", "a b"]))
        attrs += f' xlink:href="{href}"'
    children = ""
    if depth < 4:
        children = "".join(draw(st.lists(st.one_of(_TEXT, element(depth + 1)), max_size=4)))
    return f"<{tag}{attrs}>{children}</{tag}>"


@FUZZ
@given(st.lists(element(), min_size=1, max_size=5), st.booleans())
def test_generated_jats_trees(parts: list[str], wrap: bool) -> None:
    inner = "".join(parts)
    doc = f'<article xmlns:xlink="http://www.w3.org/1999/xlink">{inner}</article>' if wrap else inner
    _check(doc.encode())


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_entity_attacks_in_other_encodings_are_not_expanded(encoding: str) -> None:
    """The ``<!ENTITY`` byte check cannot see UTF-16/32; the parser itself must not expand them."""
    laughs = (
        f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n'
        '<!DOCTYPE article [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<article><front><article-meta><title-group><article-title>&e;&xxe;</article-title>"
        "</title-group></article-meta></front></article>"
    ).encode(encoding)
    started = time.perf_counter()
    try:
        record = parse_jats(laughs)
    except JatsError:
        pass
    else:
        assert len(record.title or "") < 1000 and "root:" not in (record.title or "")
    assert time.perf_counter() - started < 5


def test_deep_nesting_and_huge_attributes_are_clean_errors_or_records() -> None:
    deep = b"<article>" + b"<sec>" * 100_000 + b"</sec>" * 100_000 + b"</article>"
    _check(deep)
    wide = b'<article><fig id="' + b"a" * 5_000_000 + b'"/></article>'
    _check(wide)
