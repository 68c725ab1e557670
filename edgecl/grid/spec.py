"""A results grid: learners x backbones x datasets x protocols x seeds, expanded into run configs.

``GridSpec`` names the axes and the settings every run shares; ``GridSpec.runs()``
expands it, backbone-major (one backbone's embeddings are reused by the runs that
follow it), into ``GridRun``s: a ``RunConfig`` plus the labels the results table
groups by. ``GridRun.key`` identifies a run across result files (``--resume``,
``--merge``): the learner with its hyper-parameters, backbone, dataset, protocol,
class-order seed, data seed and per-class counts.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..experiment import RunConfig


@dataclass(frozen=True)
class Protocol:
    """``B<base>[%]-Inc<increment>``; base 0 means the first task is an increment like the others."""

    label: str
    base: int
    base_is_percent: bool
    increment: int

    @classmethod
    def parse(cls, text: str) -> Protocol:
        m = re.fullmatch(r"[Bb](\d+)(%?)-[Ii]nc(\d+)", text.strip())
        if not m or int(m.group(3)) < 1:
            raise ValueError(f"bad protocol {text!r}: use e.g. B0-Inc10, B50%-Inc10 or B20-Inc5")
        return cls(text.strip(), int(m.group(1)), m.group(2) == "%", int(m.group(3)))

    def init_cls(self, num_classes: int) -> int:
        base = round(num_classes * self.base / 100) if self.base_is_percent else self.base
        if not 0 <= base < num_classes:
            raise ValueError(f"protocol {self.label}: base {base} does not fit {num_classes} classes")
        return base


@dataclass(frozen=True)
class BackboneChoice:
    """A backbone of the grid: edgecl or timm name, input size (``None``: its own), timm weights file."""

    name: str
    img_size: int | None = None
    weights: str | None = None

    @property
    def label(self) -> str:
        return self.name + (f"@{self.img_size}" if self.img_size else "")


def split_list(text: str) -> list[str]:
    """The items of a comma-separated list; an empty list is an error."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"empty list: {text!r}")
    return items


def parse_backbones(text: str, img_size: int | None, weights: dict[str, str]) -> list[BackboneChoice]:
    """``NAME[@SIZE],...``; ``img_size`` applies to the backbones without ``@SIZE`` that can change it."""
    from ..zoo import EMBEDDED

    out = []
    for item in split_list(text):
        name, _, size = item.partition("@")
        size_v = int(size) if size else (None if name in EMBEDDED else img_size)
        out.append(BackboneChoice(name, size_v, weights.get(name)))
    return out


def num_classes(dataset: str, data_seed: int = 0, train_per_class: int = 30, test_per_class: int = 10) -> int:
    """The number of classes of a dataset spec (loads, or generates and caches, the data)."""
    from ..data import load_dataset

    train, _ = load_dataset(dataset, seed=data_seed, train_per_class=train_per_class, test_per_class=test_per_class)
    return train.num_classes


def run_key(run: dict[str, Any]) -> str:
    """The identity of a run record (or of ``GridRun.stub``) across result files."""
    c = run["config"]
    return json.dumps([c["learner"], c["learner_args"], run["backbone"], c["dataset"], run["protocol"], c["order_seed"],
                       c["data_seed"], c["train_per_class"], c["test_per_class"]], sort_keys=True)


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its config, the labels of its backbone and protocol, its dataset's class count."""

    config: RunConfig
    backbone: str
    protocol: str
    num_classes: int
    open_set: bool = False  # also record edgecl.openset measures (classes still to come as unknowns)

    @property
    def stub(self) -> dict[str, Any]:
        """The fields a run record starts with (``run_key`` reads them)."""
        return {"config": asdict(self.config), "backbone": self.backbone, "protocol": self.protocol}

    @property
    def key(self) -> str:
        return run_key(self.stub)

    def describe(self) -> str:
        c = self.config
        return f"{c.learner} {self.backbone} {c.dataset} {self.protocol} seed {c.order_seed}"


@dataclass
class GridSpec:
    """The axes of a grid and the settings its runs share (see ``RunConfig``)."""

    learners: list[str]
    backbones: list[BackboneChoice]
    datasets: list[str]
    protocols: list[Protocol]
    seeds: list[int]
    learner_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_seed: int = 0
    train_per_class: int = 30
    test_per_class: int = 10
    batch_size: int = 128
    engine: str = "auto"
    embedding_cache: bool = True
    open_set: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.learner_args, dict) or set(self.learner_args) - set(self.learners):
            raise ValueError(f"learner_args must map learners of the grid to hyper-parameters, got {self.learner_args}")

    def axes(self) -> dict[str, list]:
        """The grid's axes as labels (the ``grid`` field of a report)."""
        return {"learners": list(self.learners), "backbones": [b.label for b in self.backbones],
                "datasets": list(self.datasets), "protocols": [p.label for p in self.protocols],
                "seeds": list(self.seeds)}

    def runs(self) -> list[GridRun]:
        """Every run, backbone-major: backbone, dataset, learner, protocol, seed."""
        n_classes = {d: num_classes(d, self.data_seed, self.train_per_class, self.test_per_class) for d in self.datasets}
        return [
            self._run(bb, dataset, learner, proto, seed, n_classes[dataset])
            for bb in self.backbones for dataset in self.datasets for learner in self.learners
            for proto in self.protocols for seed in self.seeds
        ]

    def _run(self, bb: BackboneChoice, dataset: str, learner: str, proto: Protocol, seed: int, n: int) -> GridRun:
        cfg = RunConfig(
            dataset=dataset, backbone=bb.name, weights=bb.weights, img_size=bb.img_size, learner=learner,
            learner_args=self.learner_args.get(learner, {}), init_cls=proto.init_cls(n), increment=proto.increment,
            order_seed=seed, data_seed=self.data_seed, batch_size=self.batch_size,
            train_per_class=self.train_per_class, test_per_class=self.test_per_class, engine=self.engine,
            embedding_cache=self.embedding_cache,
        )
        return GridRun(cfg, bb.label, proto.label, n, self.open_set)
