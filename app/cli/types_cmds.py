"""Subcommand ``biomedsearch eval-types``: the figure-type classifier's measured accuracy (per type,
image only / caption only / combined) and the multi-panel flag's precision and recall, printed as
Markdown tables (:mod:`indexer.type_eval` does the work)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from app.cli.base import cli, console, fail, load_settings, setup_logging
from app.cli.index_cmds import _load_encoder
from training.fsio import write_atomic


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _type_table(title: str, result: dict[str, Any]) -> list[str]:
    """Per type: support, then precision / recall of each method."""
    from indexer.type_eval import METHODS

    rows: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        for s in result["per_type"][method]:
            rows.setdefault(s.kind.value, {"support": s.support})[method] = s
    lines = [f"**{title}** ({result['n']} figures; precision / recall, %)", "",
             "| type | n | image only | caption only | combined |", "|---|---|---|---|---|"]
    stray: dict[str, list[str]] = {m: [] for m in METHODS}  # predicted types the truth does not hold
    for kind, row in rows.items():
        if not row["support"]:
            for method in METHODS:
                s = row.get(method)
                if s is not None and s.predicted:
                    stray[method].append(f"{kind} {s.predicted}")
            continue
        cells = []
        for method in METHODS:
            s = row.get(method)
            cells.append(f"{_pct(s.precision)} / {_pct(s.recall)}" if s is not None else "- / -")
        lines.append(f"| {kind} | {row['support']} | " + " | ".join(cells) + " |")
    if any(stray.values()):
        cells = [", ".join(stray[m]) or "none" for m in METHODS]
        lines.append("| *predicted, not in the truth* | | " + " | ".join(cells) + " |")
    f1 = result["macro_f1"]
    top = max(f1.values())
    cells = [f"**{_pct(f1[m])}**" if f1[m] == top else _pct(f1[m]) for m in METHODS]
    lines.append("| **macro-F1** | | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _panel_table(title: str, report: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"**{title}**", "", "| flag from | figures | multi-panel | flagged | precision | recall |",
             "|---|---|---|---|---|---|"]
    for name, label in (("caption", "caption (panel labels)"), ("image", "image (gutters)"),
                        ("combined", "either (what is stored)")):
        r = report[name]
        lines.append(f"| {label} | {r['n']} | {r['positives']} | {r['flagged']} | {_pct(r['precision'])} | "
                     f"{_pct(r['recall'])} |")
    return [*lines, ""]


@cli.command("eval-types")
def eval_types_cmd(
    model: str | None = typer.Option(None, "--model", help="Encoder spec (default: the configured model)."),
    data: Path = typer.Option(Path("../shared/data"), "--data", help="The shared data folder (jats/, medpix/, "
                              "roco-captions/)."),
    labels: Path = typer.Option(Path("tests/fixtures/figure_types.jsonl"), "--labels",
                                help="Hand labels (JSONL, one figure a line with its reason)."),
    tune: bool = typer.Option(False, "--tune", help="Choose the combination's weights on the tune split first "
                              "(MedPix train + hand labels marked tune) and report with them."),
    out: Path | None = typer.Option(None, "--out", help="Also write the figures as JSON here."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Figure-type accuracy (MedPix val CT/MR, hand-labelled test split) and multi-panel precision/recall."""
    from indexer.figure_types import DEFAULT_PARAMS
    from indexer.type_eval import EvalError, hand_items, medpix_items, panel_report, score, summary
    from indexer.type_eval import tune as tune_params

    setup_logging(verbose)
    settings = load_settings(model=model)
    spec = settings.default_model_spec()
    if spec is None:
        fail(f"no encoder: pass --model SPEC or export one under {settings.models_dir}")
    started = time.perf_counter()
    try:
        hand = hand_items(labels, data)
        val = medpix_items(data / "medpix" / "val.jsonl", "test")
        train = medpix_items(data / "medpix" / "train.jsonl", "tune") if tune else []
    except EvalError as exc:
        fail(str(exc))
    encoder = _load_encoder(spec, settings.device, settings.encoder_precision)
    scored = score([*val, *hand, *train], encoder)
    is_test = [it.split == "test" and it.source != "medpix-train" for it in scored.items]
    params = DEFAULT_PARAMS
    lines = [f"Encoder `{encoder.model_id}` ({spec}).", ""]
    if tune:
        tune_set = scored.subset(it.split == "tune" and it.source != "medpix" for it in scored.items)
        params, value = tune_params(tune_set)
        lines += [f"Tuned on {len(tune_set.items)} figures (MedPix train + hand labels marked tune): "
                  f"`{params.describe()}` (combined macro-F1 {_pct(value)} there).", ""]
    else:
        lines += [f"Combination weights: `{params.describe()}`.", ""]
    hand_test = scored.subset(it.split == "test" and it.source not in ("medpix-val", "medpix-train", "medpix")
                              for it in scored.items)
    medpix_val = scored.subset(it.source == "medpix-val" for it in scored.items)
    reported = scored.subset(t and it.source != "medpix" for t, it in zip(is_test, scored.items, strict=True))
    with_images = reported.subset(it.image is not None for it in reported.items)
    results = {
        "MedPix val: CT vs MR from the modality field": summary(medpix_val, params),
        "Hand-labelled test split": summary(hand_test, params),
        "Hand-labelled test split + MedPix val, figures with an image": summary(with_images, params),
        "Hand-labelled test split + MedPix val, all": summary(reported, params),
    }
    for title, result in results.items():
        lines += _type_table(title, result)
    panels_test = panel_report(scored.subset(
        it.split == "test" and it.source not in ("medpix-val", "medpix-train") for it in scored.items
    ))
    panels_all = panel_report(scored.subset(it.source not in ("medpix-val", "medpix-train") for it in scored.items))
    lines += _panel_table("Multi-panel flag, hand-labelled test split", panels_test)
    lines += _panel_table("Multi-panel flag, every hand-labelled figure (tune + test)", panels_all)
    typer.echo("\n".join(lines))
    if out is not None:
        doc = {
            "model_id": encoder.model_id, "params": {**params.__dict__, "image_bias": list(params.image_bias)},
            "macro_f1": {t: r["macro_f1"] for t, r in results.items()},
            "per_type": {t: {m: [s.__dict__ | {"kind": s.kind.value} for s in r["per_type"][m]]
                             for m in r["per_type"]} for t, r in results.items()},
            "multipanel": {"test": panels_test, "all": panels_all},
        }
        write_atomic(out, json.dumps(doc, indent=1))
    console.print(f"evaluated {len(scored.items)} figures with {encoder.model_id} in "
                  f"{time.perf_counter() - started:.0f}s")
