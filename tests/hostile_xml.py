"""Hostile XML documents shared by the library-level and the API-level hostile-input tests."""

from __future__ import annotations

# Exponential entity expansion ("billion laughs"): 10^3 "lol"s from a few hundred bytes.
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE article [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<article><front><article-meta><title-group><article-title>&lol3;</article-title></title-group>
</article-meta></front></article>"""
