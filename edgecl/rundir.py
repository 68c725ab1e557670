"""A training run on disk: ``run.json`` + ``backbone.safetensors`` + ``learner_state.npz``.

The run directory is self-contained: export needs nothing else (the backbone's
weights are copied in, whatever file they came from). ``run.json`` is written
last, so a directory without it is an incomplete run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .backbones import BackboneSpec, backbone_from_state
from .errors import EdgeclError
from .learners import create_learner

RUN_JSON = "run.json"
BACKBONE_FILE = "backbone.safetensors"
STATE_FILE = "learner_state.npz"


class RunDirError(EdgeclError, ValueError):
    """A run directory that is missing, incomplete or inconsistent."""


def save_run(path: Path, config: dict[str, Any], learner, class_names: list[str], metrics: dict[str, Any]) -> Path:
    """Writes the run to ``path``. Every file is written under a temporary name first, so a failure (a full
    disk) leaves a run already in ``path`` as it was; then run.json goes, the files are renamed into place
    and run.json comes back last."""
    from safetensors.torch import save_file

    from edgecl_runtime.storage import temp_name

    path.mkdir(parents=True, exist_ok=True)
    run = {
        "edgecl_version": __version__,
        "config": config,
        "backbone": learner.backbone.spec.to_dict(),
        "learner": {"name": learner.name, "hparams": learner.hparams},
        "class_names": class_names,
        "metrics": metrics,
        "files": {"backbone": BACKBONE_FILE, "learner_state": STATE_FILE},
    }
    temps = {name: temp_name(path / name) for name in (BACKBONE_FILE, STATE_FILE, RUN_JSON)}
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in learner.backbone.model.state_dict().items()}
        save_file(state, str(temps[BACKBONE_FILE]))
        with open(temps[STATE_FILE], "wb") as f:
            np.savez(f, **learner.state())
        temps[RUN_JSON].write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        (path / RUN_JSON).unlink(missing_ok=True)  # the directory is incomplete until run.json is back
        for name, tmp in temps.items():
            os.replace(tmp, path / name)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The training configuration saved with a run: ``path`` is a run directory, its ``run.json``, or a JSON
    file holding the configuration itself (the ``config`` object of a ``run.json``)."""
    path = Path(path)
    file = path / RUN_JSON if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"run configuration not found: {file}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read the run configuration {file}: {exc}") from exc
    config = data.get("config", data) if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise RunDirError(f"{file} holds no run configuration (a JSON object, or a run.json with 'config')")
    return config


def load_run(path: Path, device: str = "cpu", rebuild: Callable = backbone_from_state):
    """``(run dict, learner)`` of a saved run; ``rebuild(spec, state_dict)`` makes its backbone (the zoo's
    ``backbone_from_run`` also restores what a named model carries beside its weights, e.g. a CLIP's text side)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory not found: {path}")
    if not (path / RUN_JSON).is_file():
        raise RunDirError(f"{path} is not a complete edgecl run ({RUN_JSON} missing)")
    run = json.loads((path / RUN_JSON).read_text(encoding="utf-8"))
    for name in run["files"].values():
        if not (path / name).is_file():
            raise RunDirError(f"run file missing: {path / name}")
    spec = BackboneSpec.from_dict(run["backbone"])
    backbone = rebuild(spec, load_file(str(path / run["files"]["backbone"])))
    learner = create_learner(run["learner"]["name"], backbone, device=device, **run["learner"]["hparams"])
    with np.load(path / run["files"]["learner_state"], allow_pickle=False) as z:
        learner.load_state({k: z[k] for k in z.files})
    if learner.num_classes != len(run["class_names"]):
        raise RunDirError(f"{path}: learner has {learner.num_classes} classes, run.json names {len(run['class_names'])}")
    return run, learner
