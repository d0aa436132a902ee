"""Export a model as an open_clip ``local-dir`` folder (the layout of the published BiomedCLIP).

The folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), the weights as
``open_clip_model.safetensors``, the tokenizer files and, for a Hugging Face text tower, that
tower's ``config.json``. Nothing in it names a path on this host: ``hf_model_name`` keeps the
tower's hub id (as the published config does) and open_clip reads the tokenizer of a ``local-dir``
model from the folder itself, so the folder can be moved or copied to another host.

Plain ``open_clip.create_model_from_pretrained("local-dir:DIR")`` needs nothing from this project.
For a Hugging Face text tower it still asks ``transformers`` for the config of ``hf_model_name``
(the hub, or its cache); :func:`training.encoders.load_encoder` instead reads the ``config.json``
shipped in the folder, so it works fully offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from training.errors import TrainingError
from training.fsio import DIR_MODE, FILE_MODE, replace_dir
from training.model_factory import BuiltModel

WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"


def export_model(built: BuiltModel, out_dir: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``built`` as an open_clip local-dir folder at ``out_dir``, atomically.

    The folder is assembled beside ``out_dir`` and swapped in with ``os.replace``, so a reader
    never sees a half-written export; an existing export at ``out_dir`` is replaced.
    ``extra`` (e.g. training metrics) is stored under the ``biomedsearch`` key of the config.
    Returns the export folder.
    """
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = built.model
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        text = getattr(model, "text", None)
        hf_config = getattr(text, "config", None)
        if hf_config is not None and hasattr(hf_config, "to_json_string"):
            (tmp / "config.json").write_text(hf_config.to_json_string(), encoding="utf-8")
        if built.tokenizer is not None:
            built.tokenizer.tokenizer.save_pretrained(str(tmp))
        preprocess = {k: v for k, v in built.config.preprocess_cfg.items() if k != "size"}
        doc: dict[str, Any] = {
            "model_cfg": built.config.model_cfg,
            "preprocess_cfg": preprocess,
            "biomedsearch": {"config_name": built.config.name, "recipe": built.config.recipe, **(extra or {})},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            os.chmod(path, FILE_MODE)
        os.chmod(tmp, DIR_MODE)  # an export is meant to be read by the service user
        replace_dir(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(f"cannot export the model to {out}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
