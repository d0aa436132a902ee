"""``python -m bench``: measured speed and scale of every stage, beside the alternatives (issue 9).

    python -m bench                                   # every stage, full sizes (long: run once)
    python -m bench --quick                           # every stage, small sizes (minutes)
    python -m bench --stage search --sizes 100000,1000000
    python -m bench --stage service,freshness --models-dir /work/runs/bench-models

Stages: ``search`` (vector index vs hnswlib / chromadb), ``service`` (HTTP end to end, split into
encode / search / db / rest), ``encoding`` (images/s, texts/s; own-length vs 256-token padding),
``ingestion`` (articles/s, figures/s from packages on disk), ``freshness`` (1,000 figures uploaded
through the API until searchable). Each prints its tables; the results of the stages that ran
replace theirs in ``--out`` (JSON, with the machine facts and load of each run) and the README
section between ``<!-- bench:start -->`` / ``<!-- bench:end -->`` is regenerated from that file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.machine import load_average, machine_facts
from bench.report import markdown, merge_results, print_tables, refresh_readme

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("search", "service", "encoding", "ingestion", "freshness")
MODULES = {
    "search": "bench.search_core",
    "service": "bench.service",
    "encoding": "bench.encoding",
    "ingestion": "bench.ingestion",
    "freshness": "bench.freshness",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", help=f"comma-separated, from {', '.join(STAGES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a check that everything runs")
    ap.add_argument("--sizes", default=None, help="search stage: vector counts (default 100000,1000000)")
    ap.add_argument("--alternatives", default="hnswlib,chromadb",
                    help="search stage: comma-separated from hnswlib, chromadb; '' to skip them")
    ap.add_argument("--chroma-max", type=int, default=10_000_000,
                    help="search stage: run chromadb only up to this many vectors (its 1M build takes long)")
    ap.add_argument("--profile", default="realistic", choices=("realistic", "hard"),
                    help="search stage data: realistic (CLIP-like neighbour cosines) or hard (diffuse clusters)")
    ap.add_argument("--figures", type=int, default=None, help="service/freshness: figures in the data home")
    ap.add_argument("--models-dir", type=Path, default=Path("/work/runs/bench-models"),
                    help="where the random-init tiny and base encoders are exported (made when missing)")
    ap.add_argument("--work-dir", type=Path, default=None, help="scratch data homes (default: a temp folder)")
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data",
                    help="ingestion: the shared data folder (jats/packages, medpix/train.jsonl)")
    ap.add_argument("--threads", type=int, default=2, help="threads for building (queries are timed on 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--no-readme", action="store_true", help="do not refresh the README section")
    ap.add_argument("--render", action="store_true", help="run nothing: print and re-render the README from --out")
    args = ap.parse_args(argv)
    chosen = STAGES if args.stage == "all" else tuple(s.strip() for s in args.stage.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    args.stages = () if args.render else chosen
    return args


def all_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every stage's tables, in stage order, from a results document."""
    out = []
    for stage in STAGES:
        entry = doc.get("stages", {}).get(stage)
        if entry is None:
            continue
        module = importlib.import_module(MODULES[stage])
        out.extend(module.tables(entry["result"]))
    return out


def machine_lines(doc: dict[str, Any]) -> str:
    """One Markdown line per stage: when, on what, under what load."""
    lines = []
    for stage in STAGES:
        entry = doc.get("stages", {}).get(stage)
        if entry is None:
            continue
        m = entry["machine"]
        lines.append(
            f"- `{stage}`: {m['started_at']}, {m['cpu']} ({m['cores']} cores, {m['memory_gb']} GB"
            f"{', GPUs: ' + ', '.join(m['gpus']) if m['gpus'] else ', no GPU'}), load average (1/5/15 min) "
            f"{'/'.join(map(str, m['load_at_start']))} at start, {'/'.join(map(str, m['load_at_end']))} at end, "
            f"{entry['seconds']:.0f} s, commit {m['commit']}, `{entry['command']}`"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen stages; print, write JSON, refresh the README. Returns the exit status."""
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {}
    failed = []
    log = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    for stage in args.stages:
        facts = machine_facts()
        console.rule(f"[bold]{stage}")
        console.print(f"{facts['cpu']}, {facts['cores']} cores, {facts['memory_gb']} GB; load {facts['load_at_start']}")
        start = time.perf_counter()
        module = importlib.import_module(MODULES[stage])
        try:
            result = module.run_stage(args, log=log)
        except Exception as exc:  # one failed stage must not lose the others' results
            console.print_exception()
            failed.append(f"{stage}: {exc}")
            continue
        facts["load_at_end"] = load_average()
        results[stage] = {"machine": facts, "seconds": round(time.perf_counter() - start, 1), "command": command,
                          "quick": args.quick, "result": result}
        print_tables(console, stage, module.tables(result))
        console.print(f"load average at end: {facts['load_at_end']}")
    if results or args.render:
        doc = merge_results(args.out, results)
        if args.render:
            print_tables(console, "results", all_tables(doc))
        console.print(f"results written to {args.out}")
        if not args.no_readme and not args.quick and not any(e.get("quick") for e in doc["stages"].values()):
            body = markdown(all_tables(doc)) + "\nWhere and when each stage ran:\n\n" + machine_lines(doc) + "\n"
            if refresh_readme(args.readme, body):
                console.print(f"README section refreshed in {args.readme}")
            else:
                console.print(f"[yellow]no bench markers in {args.readme}: README not refreshed")
    for line in failed:
        console.print(f"[red]stage failed: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
