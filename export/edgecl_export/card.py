"""The manifest's ``card`` section: what only the export knows, for the bundle's model card (``README.md``).

``edgecl_runtime.card`` renders the card from the bundle alone (the device rewrites it after
every update, without torch); this module records, at export, what the bundle would not know
otherwise: the weights' licence, the training classes with their example counts, the training
data spec and the accuracy the run measured (read from the run directory that
``edgecl.workflows.export_run`` names in ``extra``). Nothing in it is a machine path: a data set
given as a path is recorded by its last component.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgecl_runtime import card, signing, tensors
from edgecl_runtime.card import weights_license
from edgecl_runtime.store import read_state

# Data sets edgecl generates (edgecl.data.sources): named in the card's ``datasets``; anything else is local data.
NAMED_SETS = ("shapes", "glyphs", "emoji")
# Run configuration keys copied into the training record (edgecl.experiment.RunConfig), in this order.
CONFIG_KEYS = ("train_per_class", "test_per_class", "test_fraction", "init_cls", "increment", "order_seed",
               "data_seed", "img_size")


def card_section(bundle: Path, sections: dict[str, Any], extra: dict | None) -> dict[str, Any]:
    """The ``card`` section of the manifest built from ``sections`` (the head file already in ``bundle``)."""
    licence, note = weights_license(sections["backbone"].get("weights"))
    counts = tensors.read(bundle / sections["head"]["file"]).get("counts")
    classes = sections["classes"]
    out: dict[str, Any] = {
        "license": licence,
        "license_note": note,
        "classes": {n: (int(counts[i]) if counts is not None else None) for i, n in enumerate(classes)},
    }
    config = _run_config(extra)
    if config is not None:
        out["training"] = training_spec(config, len(classes))
    metrics = finite((extra or {}).get("metrics"))
    if metrics:
        out["metrics"] = metrics
    return out


def _run_config(extra: dict | None) -> dict[str, Any] | None:
    """The training configuration of the run: ``extra["config"]``, else read from ``extra["run_dir"]``; ``None``
    without either."""
    from edgecl.rundir import RunDirError, read_config

    if (extra or {}).get("config") is not None:
        return extra["config"]
    run_dir = (extra or {}).get("run_dir")
    if not run_dir:
        return None
    try:
        return read_config(run_dir)
    except RunDirError:
        return None


def training_spec(config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The training data spec of a run configuration: data set, split sizes, class order and task sizes."""
    dataset = str(config.get("dataset", "?"))
    name = dataset.split(":", 1)[0]
    named = name in NAMED_SETS
    out: dict[str, Any] = {"dataset": dataset if named else f"local data: {_last_part(dataset)}"}
    if named:
        out["datasets"] = [name]
    out.update({k: config[k] for k in CONFIG_KEYS if config.get(k) is not None})
    out["tasks"] = task_sizes(int(config.get("init_cls", num_classes)), int(config.get("increment", num_classes)),
                              num_classes)
    return out


def _last_part(spec: str) -> str:
    """A local data set's name without its machine path: ``wds:/data/x-*.tar`` -> ``x-*.tar``."""
    kind, _, rest = spec.partition(":") if spec.startswith(("wds:", "stream:")) else ("", "", spec)
    tail = Path(rest.rstrip("/")).name or "?"
    return f"{kind}:{tail}" if kind else tail


def task_sizes(init: int, increment: int, num_classes: int) -> list[int]:
    """Classes per task of the B``init``-Inc``increment`` protocol over ``num_classes`` classes (``init`` 0: the
    first task has ``increment`` classes too, as ``edgecl.protocol.splits``)."""
    sizes, left = [], num_classes
    step = max(1, init or increment)
    while left > 0:
        sizes.append(min(step, left))
        left -= sizes[-1]
        step = max(1, increment)
    return sizes


def finite(value):
    """``value`` with non-finite floats replaced by ``None`` (the manifest is strict JSON: no NaN)."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_bundle_card(bundle: Path) -> Path:
    """Write ``README.md``, the model card, into the just-written ``bundle`` from its verified state (checksums;
    not signatures: the export is signed after, and the card is outside what is signed)."""
    with signing.using(signing.Policy()):
        return card.write(read_state(bundle, verify=True, full=False))
