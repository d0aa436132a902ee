"""Where the time of a ``biomedclip-tiny`` training step goes on this machine (prints figures).

Measures, on the MedPix train split: JPEG decode + train transform per image; the image tower's
forward+backward per batch in fp32 and under bf16 autocast; the frozen text tower's one-off caption
cache (fp32 / bf16, batches in file order / sorted by length); one whole optimizer step.
Wall time and this process's CPU time are both printed, with the load average: on a shared
machine the ratio of CPU to wall time shows how much of a core the benchmark actually got.

    python -m bench.train_speed [--config biomedclip-tiny] [--batch-size 64] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medpix" / "train.jsonl"


def _timed(label: str, fn: Callable[[], object], *, repeat: int, per: int, unit: str) -> float:
    fn()  # warm-up (allocators, oneDNN kernels)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    wall, cpu = (time.perf_counter() - w0) / repeat, (time.process_time() - c0) / repeat
    print(f"{label:<52} {wall * 1000:8.0f} ms wall  {cpu * 1000:8.0f} ms cpu  {per / wall:8.1f} {unit}/s")
    return wall


def main() -> None:
    """Parse arguments, run the measurements, print one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="biomedclip-tiny")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from open_clip.transform import image_transform_v2

    from training.data import PairDataset, filter_pairs, read_pairs
    from training.losses import multi_positive_clip_loss
    from training.model_factory import build_model, load_config
    from training.preprocess import SplitTransform

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {load_average()}")
    built = build_model(load_config(args.config))
    model = built.model
    pairs, _ = filter_pairs(read_pairs(args.data))
    ds = PairDataset(pairs, image_transform_v2(built.preprocess_cfg, is_train=True))
    bs = args.batch_size
    idx = list(range(bs))
    for i in idx:
        ds.load_image(i)  # file bytes cached, as after the first epoch
    _timed("decode + open_clip transform per image (batch)", lambda: [ds[i] for i in idx], repeat=args.repeat,
           per=bs, unit="img")
    split = SplitTransform(ds.transform)
    _timed("decode + PIL part per image, batched normalise", lambda: split([ds.load_image(i) for i in idx]),
           repeat=args.repeat, per=bs, unit="img")
    pixels = torch.stack([ds[i][0] for i in idx])
    model.train()

    def image_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feats = model.encode_image(pixels, normalize=True)
        feats.float().sum().backward()
        model.zero_grad(set_to_none=True)

    _timed("image tower fwd+bwd fp32 (batch)", lambda: image_step(False), repeat=args.repeat, per=bs, unit="img")
    _timed("image tower fwd+bwd bf16 autocast (batch)", lambda: image_step(True), repeat=args.repeat, per=bs,
           unit="img")

    assert built.tokenizer is not None
    text = model.text
    captions = ds.captions[:256]
    tokens = built.tokenizer(captions)
    pad = int(built.tokenizer.tokenizer.pad_token_id or 0)
    lengths = (tokens != pad).sum(1)

    def cache(order: torch.Tensor, bf16: bool) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(order), 128):
                ids = tokens[order[i:i + 128]]
                ids = ids[:, : int((ids != pad).sum(1).max())]
                mask = (ids != pad).long()
                text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask)

    if hasattr(text, "transformer"):
        text.eval()
        file_order = torch.arange(len(captions))
        by_length = torch.argsort(lengths)
        n = len(captions)
        _timed("text cache fp32, file order", lambda: cache(file_order, False), repeat=1, per=n, unit="cap")
        _timed("text cache fp32, sorted by length", lambda: cache(by_length, False), repeat=1, per=n, unit="cap")
        _timed("text cache bf16, sorted by length", lambda: cache(by_length, True), repeat=1, per=n, unit="cap")
        with torch.no_grad():
            ids = tokens[:bs]
            ids = ids[:, : int((ids != pad).sum(1).max())]
            mask = (ids != pad).long()
            pooled = text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask).float()
    else:
        pooled = None
    cap_ids = torch.arange(bs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def full_step(bf16: bool) -> None:
        batch = torch.stack([ds[i][0] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img = model.encode_image(batch, normalize=True)
            if pooled is not None:
                txt = torch.nn.functional.normalize(text.proj(pooled), dim=-1)
            else:
                txt = model.encode_text(tokens[:bs], normalize=True)
            loss = multi_positive_clip_loss(img.float(), txt.float(), cap_ids, model.logit_scale.exp().float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _timed("whole step incl. data, fp32 (batch)", lambda: full_step(False), repeat=args.repeat, per=bs,
           unit="pair")
    _timed("whole step incl. data, bf16 autocast (batch)", lambda: full_step(True), repeat=args.repeat, per=bs,
           unit="pair")
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
