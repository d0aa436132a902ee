"""Load an export with nothing but open_clip, in a fresh process: what a user of the published
BiomedCLIP layout does. Shared by the fast smoke test and the trained-encoder test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plain_open_clip_features(
    export: Path, work: Path, texts: Sequence[str], image: Path | None = None,
    blocked_modules: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Copy ``export`` to a new folder under ``work`` and encode ``texts`` (and ``image``) there with
    ``open_clip.create_model_from_pretrained('local-dir:...')`` in a fresh interpreter that imports
    no project code; returns (text features, image features or None).

    The text tower is named by its hub id, as in the published BiomedCLIP config; offline,
    transformers reads that id's config.json from a Hugging Face cache, simulated here.
    Asserts that the process succeeds and loaded none of ``training``, ``indexer``, ``app``.
    ``blocked_modules`` cannot be imported there (a machine without those packages installed).
    """
    moved = work / "moved" / "exported"
    shutil.copytree(export, moved)
    cache = work / "hf-cache"
    snap = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    shutil.copy(export / "config.json", snap / "config.json")
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    text_out, image_out = work / "text.npy", work / "image.npy"
    script = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked_modules)
        + "import numpy as np, open_clip, torch\n"
        "from PIL import Image\n"
        f"model, preprocess = open_clip.create_model_from_pretrained('local-dir:{moved}')\n"
        f"tok = open_clip.get_tokenizer('local-dir:{moved}')\n"
        "model.eval()\n"
        "with torch.no_grad():\n"
        f"    np.save('{text_out}', model.encode_text(tok({list(texts)!r}), normalize=True).numpy())\n"
    )
    if image is not None:
        script += (
            "    pixels = preprocess(Image.open(" + repr(str(image)) + ").convert('RGB'))[None]\n"
            f"    np.save('{image_out}', model.encode_image(pixels, normalize=True).numpy())\n"
        )
    script += "assert not any(m.split('.')[0] in ('training', 'indexer', 'app') for m in sys.modules)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(text_out), (np.load(image_out) if image is not None else None)
