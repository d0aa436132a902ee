"""`biomedsearch eval-search` end to end on a real catalogue (lexical mode: no encoder needed):
two query sets generated from the shared data, one table per set, errors for bad input."""

from __future__ import annotations

from pathlib import Path

from querysets import jats_article_dirs, jats_queries, medpix_queries, medpix_subset
from typer.testing import CliRunner

from app.cli import cli
from app.relevance import write_query_set


def test_eval_search_scores_each_query_set(tmp_path: Path, shared_data: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    monkeypatch.setenv("BIOMEDSEARCH_DATA_HOME", str(home))
    monkeypatch.delenv("BIOMEDSEARCH_DATABASE_URL", raising=False)
    medpix = medpix_subset(shared_data, tmp_path / "medpix", max_cases=8)
    runner = CliRunner()
    dirs = jats_article_dirs(shared_data)
    ingested = runner.invoke(cli, ["ingest", *map(str, dirs), str(medpix)])
    assert ingested.exit_code == 0, ingested.output
    jats_set, medpix_set = tmp_path / "jats.jsonl", tmp_path / "medpix-val.jsonl"
    assert write_query_set(jats_set, jats_queries(dirs)) > 10
    assert write_query_set(medpix_set, medpix_queries(medpix)) > 3

    result = runner.invoke(
        cli, ["eval-search", "--queries", str(jats_set), "--queries", str(medpix_set), "--mode", "lexical"]
    )
    assert result.exit_code == 0, result.output
    assert "jats.jsonl" in result.output and "medpix-val.jsonl" in result.output
    # caption-title queries find their own figure by its words: lexical recall is high on this set
    line = next(ln for ln in result.output.splitlines() if ln.startswith("jats.jsonl: evaluated"))
    ndcg = float(line.split("lexical nDCG@10 ")[1].split(",")[0])
    assert 0.5 < ndcg <= 1.0

    bad = runner.invoke(cli, ["eval-search", "--queries", str(tmp_path / "missing.jsonl"), "--mode", "lexical"])
    assert bad.exit_code != 0 and "missing.jsonl" in bad.output
    unknown = runner.invoke(cli, ["eval-search", "--queries", str(jats_set), "--mode", "telepathy"])
    assert unknown.exit_code != 0 and "telepathy" in unknown.output
