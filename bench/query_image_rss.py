"""``python -m bench.query_image_rss``: peak RSS of the service under concurrent worst-case image queries.

Starts the real service (``create_app`` under uvicorn, :class:`bench.server.Server`) with a
random-init ``biomedclip-tiny`` encoder and the default query-image limits (or ``--slots`` /
``--wait``), resets the server process's peak-RSS mark (``/proc/PID/clear_refs``), sends
``--clients`` simultaneous ``POST /api/search/image`` queries of one hostile kind, and prints the
process's idle RSS, its peak RSS during the burst (``VmHWM``) and the answers' statuses:

- ``at-cap``: a 16-bit greyscale PNG of 4,000 x 4,000 (16 MP, the largest the pixel cap lets
  through; 2 bytes a pixel decoded, the worst mode for the old float conversion);
- ``over-cap``: a 16-bit greyscale PNG of 7,700 x 7,700 (59 MP; a few hundred KB), refused from
  its header.

    python -m bench.query_image_rss --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.models import ensure_model
from bench.server import Server

KINDS = {"at-cap": 4000, "over-cap": 7700}


def gray16_png(side: int) -> bytes:
    """A ``side`` x ``side`` 16-bit greyscale PNG whose rows are a horizontal ramp."""
    ramp = np.linspace(0, 65535, side, dtype=np.uint16)
    pixels = np.broadcast_to(ramp, (side, side)).copy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def _burst(url: str, data: bytes, clients: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        async def one() -> int:
            resp = await http.post("/api/search/image", files={"file": ("q.png", data)}, data={"mode": "image"})
            return resp.status_code

        return list(await asyncio.gather(*(one() for _ in range(clients))))


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print one line per query kind."""
    ap = argparse.ArgumentParser(prog="python -m bench.query_image_rss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    ap.add_argument("--slots", type=int, default=None, help="query_image_slots (default: the setting's default)")
    ap.add_argument("--wait", type=float, default=None, help="query_image_wait_s (default: the setting's default)")
    ap.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-models")
    args = ap.parse_args(argv)
    model = ensure_model("biomedclip-tiny", args.models_dir)
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    inputs = {kind: gray16_png(KINDS[kind]) for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-qimg-") as tmp:
        settings = {"data_home": str(Path(tmp) / "home"), "model": f"local-dir:{model}", "device": "cpu",
                    "use_gpu": False, "run_worker": False, "text_model": None, "_env_file": None}
        if args.slots is not None:
            settings["query_image_slots"] = args.slots
        if args.wait is not None:
            settings["query_image_wait_s"] = args.wait
        with Server(settings, need_index=False) as srv:
            pid = int(srv.proc.pid)
            httpx.post(f"{srv.url}/api/search/image", files={"file": ("w.png", gray16_png(600))}, timeout=120)
            for kind, data in inputs.items():
                time.sleep(0.5)
                idle = _status_kb(pid)["VmRSS"]
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
                start = time.perf_counter()
                statuses = asyncio.run(_burst(srv.url, data, args.clients))
                wall = time.perf_counter() - start
                peak = _status_kb(pid)["VmHWM"]
                counts = ", ".join(f"{n} x {s}" for s, n in sorted(Counter(statuses).items()))
                print(f"{kind}: {args.clients} concurrent {KINDS[kind]}x{KINDS[kind]} 16-bit PNG queries "
                      f"({len(data) / 1024:.0f} KB each): idle RSS {idle / 1024:.0f} MB, peak RSS {peak / 1024:.0f} MB "
                      f"(+{(peak - idle) / 1024:.0f} MB); answers {counts}; {wall:.1f} s")


if __name__ == "__main__":
    main()
