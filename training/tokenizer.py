"""Domain tokenizer: learn an uncased WordPiece vocabulary from captions, and measure context coverage.

BiomedCLIP trains its text tower on PubMedBERT's domain WordPiece vocabulary and reports that 256
tokens cover about 90% of PMC captions; :func:`coverage` measures the same on any caption set.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from training.errors import DataError
from training.fsio import DIR_MODE, FILE_MODE, replace_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_captions(path: str | Path, *, column: str = "caption") -> list[str]:
    """Captions from a JSONL manifest (``caption`` field), a TSV with a header (``column``), or a
    plain text file (one caption per line). Raises :class:`DataError` for a missing file or column."""
    src = Path(path).expanduser()
    if not src.is_file():
        raise DataError(f"caption file not found: {src}")
    if src.suffix == ".jsonl":
        out = []
        with open(src, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        out.append(str(json.loads(line)[column]))
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise DataError(f"{src}:{lineno}: no {column!r} field ({exc})") from exc
        return out
    if src.suffix == ".tsv":
        csv.field_size_limit(sys.maxsize)
        with open(src, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise DataError(f"{src} has no {column!r} column (columns: {reader.fieldnames})")
            return [row[column] for row in reader if row.get(column)]
    with open(src, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def train_wordpiece(captions: Iterable[str], out_dir: str | Path, *, vocab_size: int = 30000,
                    min_frequency: int = 2, model_max_length: int = 512) -> Path:
    """Learn an uncased BERT-style WordPiece vocabulary and save it as a Hugging Face tokenizer folder.

    The folder (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) loads with
    ``AutoTokenizer.from_pretrained`` and can be passed to ``biomedsearch train --tokenizer``.
    ``[PAD]`` is id 0; sequences are ``[CLS] ... [SEP]``. Written atomically. Returns the folder.
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # noqa: S106  (a token, not a password)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##")
    seen = [0]

    def counted() -> Iterator[str]:
        for caption in captions:
            seen[0] += 1
            yield caption

    tok.train_from_iterator(counted(), trainer=trainer)
    if seen[0] == 0:
        raise DataError("no captions to learn a vocabulary from")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS,
                        strict=True))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **specials)
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fast.save_pretrained(str(tmp))
        for path in tmp.iterdir():
            os.chmod(path, FILE_MODE)
        os.chmod(tmp, DIR_MODE)  # a tokenizer is meant to be read by other users
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Coverage:
    """How many captions fit in a context length (special tokens included)."""

    captions: int
    context_length: int
    fit: int
    median_tokens: float
    p90_tokens: float
    max_tokens: int

    @property
    def share(self) -> float:
        """Fraction of captions whose full token sequence fits in ``context_length``."""
        return self.fit / self.captions if self.captions else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict including ``share``."""
        return {"captions": self.captions, "context_length": self.context_length, "fit": self.fit,
                "share": self.share, "median_tokens": self.median_tokens, "p90_tokens": self.p90_tokens,
                "max_tokens": self.max_tokens}


def token_lengths(tokenizer_dir: str | Path, captions: Sequence[str]) -> list[int]:
    """Token counts (with ``[CLS]``/``[SEP]``) of each caption under the tokenizer in ``tokenizer_dir``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lengths: list[int] = []
    for i in range(0, len(captions), 1000):
        enc = tok(list(captions[i:i + 1000]), add_special_tokens=True, truncation=False)
        lengths.extend(len(ids) for ids in enc["input_ids"])
    return lengths


def coverage(tokenizer_dir: str | Path, captions: Sequence[str], context_lengths: Sequence[int] = (77, 256)
             ) -> list[Coverage]:
    """Share of ``captions`` that fit within each context length under a tokenizer."""
    import numpy as np

    if not captions:
        raise DataError("no captions to measure coverage on")
    lengths = np.array(token_lengths(tokenizer_dir, captions))
    return [Coverage(captions=len(lengths), context_length=int(c), fit=int((lengths <= c).sum()),
                     median_tokens=float(np.median(lengths)), p90_tokens=float(np.percentile(lengths, 90)),
                     max_tokens=int(lengths.max())) for c in context_lengths]
