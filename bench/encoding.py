"""Stage ``encoding``: images/s and texts/s of the tiny and BiomedCLIP-size encoders (CPU; GPU too
when torch sees one), and text padded to its own length vs to the full 256-token context.

Inputs are real: MedPix images (decoded once, so decode time is not counted) and ROCO captions.
``encode_texts`` pads each batch to its longest text (the HF text tower masks padding);
``encode_texts_padded`` pads every text to the context length. The stage reports the speed-up and
the largest absolute difference between the two outputs (they should agree to float error).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.datahome import captions
from bench.models import ensure_model


def _images(shared: Path, n: int) -> list[Image.Image]:
    manifest = shared / "medpix" / "train.jsonl"
    out: list[Image.Image] = []
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            path = manifest.parent / rec["image"]
            if path.is_file():
                with Image.open(path) as im:
                    out.append(im.convert("RGB"))
            if len(out) >= n:
                break
    rng = np.random.default_rng(0)
    while len(out) < n:
        out.append(Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)))
    return out


def _rate(fn: Any, items: list[Any]) -> tuple[float, Any]:
    fn(items[: min(4, len(items))])  # warm-up
    t = time.perf_counter()
    out = fn(items)
    return len(items) / (time.perf_counter() - t), out


def run_stage(args: Any, log: Any = print) -> dict[str, Any]:
    """Measure both encoders on every device present."""
    import torch

    from training.encoders import load_encoder

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    texts = captions(args.shared_data)
    rows = []
    for name in ("biomedclip-tiny", "biomedclip-base"):
        path = ensure_model(name, args.models_dir)
        for device in devices:
            enc = load_encoder(f"local-dir:{path}", device)
            small = name.endswith("tiny")
            n_img = (16 if args.quick else 64) if small else (4 if args.quick else 16)
            n_txt = (32 if args.quick else 256) if small else (8 if args.quick else 32)
            if device != "cpu":
                n_img, n_txt = n_img * 16, n_txt * 16
            images = _images(args.shared_data, n_img)
            batch = texts[:n_txt]
            img_rate, _ = _rate(lambda xs, e=enc: e.encode_images(xs, batch_size=32), images)
            own_rate, own = _rate(lambda xs, e=enc: e.encode_texts(xs, batch_size=32), batch)
            full_rate, full = _rate(lambda xs, e=enc: np.concatenate(
                [e.encode_texts_padded(xs[i : i + 32]) for i in range(0, len(xs), 32)]), batch)
            tokens = [len(enc.tokenizer.tokenizer(t)["input_ids"]) for t in batch]
            row = {
                "model": name, "device": device, "threads": torch.get_num_threads(),
                "images_per_s": round(img_rate, 2), "texts_per_s_own_length": round(own_rate, 2),
                "texts_per_s_padded_256": round(full_rate, 2), "speedup": round(own_rate / full_rate, 2),
                "max_abs_diff": float(np.abs(own - full).max()), "images": n_img, "texts": n_txt,
                "mean_tokens": round(float(np.mean(tokens)), 1),
            }
            rows.append(row)
            log(f"  {row}")
            del enc
    return {"rows": rows}


def tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """One row per encoder and device."""
    header = ["encoder", "device (threads)", "images/s", "texts/s (own length)", "texts/s (padded to 256)",
              "speed-up", "max abs diff", "mean tokens"]
    body = [[r["model"], f"{r['device']} ({r['threads']})", f"{r['images_per_s']:.1f}",
             f"{r['texts_per_s_own_length']:.1f}", f"{r['texts_per_s_padded_256']:.1f}", f"{r['speedup']:.1f}x",
             f"{r['max_abs_diff']:.1e}", f"{r['mean_tokens']:.0f}"] for r in result.get("rows", [])]
    return [("Encoding throughput (batches of 32; real MedPix images, ROCO captions)", header, body)]
