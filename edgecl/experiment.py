"""Run the class-incremental protocol: data -> backbone -> learner, task by task."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import distributed
from .curves import write_accuracy_curves
from .data import ArrayDataset, load_dataset
from .errors import ConfigError
from .features import FeatureExtractor, default_cache_dir
from .learners import create_learner
from .openset import OpenSetProbe
from .protocol import ClassIncremental, IncrementalMetrics
from .rundir import save_run
from .zoo import create_backbone
from .zoo.defaults import BackboneDecision, choose_backbone


EVAL_CHUNK_BATCHES = 32
_log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    dataset: str = "shapes"
    backbone: str | None = None  # None: chosen by the data set (edgecl.zoo.defaults.choose_backbone)
    weights: str | None = None
    img_size: int | None = None
    learner: str = "simplecil"
    learner_args: dict[str, Any] = field(default_factory=dict)
    init_cls: int = 10
    increment: int = 10
    order_seed: int = 1993
    data_seed: int = 0
    batch_size: int = 64
    train_per_class: int = 30  # embedded shapes only
    test_per_class: int = 10  # embedded shapes only
    test_fraction: float = 0.2  # sources without a fixed test split
    device: str = "cpu"
    engine: str = "auto"  # embedding engine for frozen modules: auto | torch | torch-fused | onnx
    embedding_cache: bool = True  # embed each image once per module state (edgecl.features)

    DERIVED = ("class_order",)  # saved with a run's config, recomputed from the seeds when re-run

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """A config from a saved run's ``config`` (``edgecl.rundir.read_config``); ``ConfigError`` names unknown keys."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names - set(cls.DERIVED))
        if unknown:
            raise ConfigError(f"unknown run configuration key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class RunResult:
    config: RunConfig
    learner: Any
    scenario: ClassIncremental
    metrics: IncrementalMetrics
    class_names: list[str]  # in class order: label i is class_names[i]
    train: ArrayDataset  # remapped
    test: ArrayDataset  # remapped
    open_set: dict | None = None  # edgecl.openset.OpenSetProbe.summary() when asked for
    backbone_choice: BackboneDecision | None = None  # which backbone the run used, and why


def evaluate(learner, ds: ArrayDataset, spec, batch_size: int = 256, indices=None,
             features: FeatureExtractor | None = None) -> np.ndarray:
    """Predicted class of each image of ``ds`` (of its rows ``indices``), embedded through ``features``
    (default: no cache, eager torch) and scored by ``learner.scores`` in batches of ``batch_size``. Rows
    are embedded in chunks of ``EVAL_CHUNK_BATCHES`` of the extractor's batches (the same batches as
    one call), so memory does not grow with the test set."""
    if features is None:
        features = FeatureExtractor(spec.input_size, spec.mean, spec.std, batch_size=batch_size, engine="torch",
                                    device=learner.device)
    rows = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    mine = distributed.local_positions(rows)  # this rank's rows under torch.distributed (else all)
    local, chunk = rows[mine], features.batch_size * EVAL_CHUNK_BATCHES
    preds = []
    for start in range(0, len(local), chunk):
        feats = features.embed(learner.embedding_module(), ds, local[start : start + chunk],
                               frozen=learner.embedding_frozen)
        preds += [learner.scores(feats[i : i + batch_size]).argmax(dim=1) for i in range(0, len(feats), batch_size)]
    return distributed.gather_rows(torch.cat(preds).numpy() if preds else np.zeros(0, np.int64), mine, len(rows))


def make_features(cfg: RunConfig, spec) -> FeatureExtractor:
    """The run's embedding service: cached under the edgecl cache directory unless ``cfg.embedding_cache`` is off;
    under torch.distributed each rank's shard, in memory (``edgecl.distributed.ShardedFeatures``)."""
    if distributed.is_distributed():
        inner = FeatureExtractor(spec.input_size, spec.mean, spec.std, engine=cfg.engine, device=cfg.device)
        return distributed.ShardedFeatures(inner)
    return FeatureExtractor(spec.input_size, spec.mean, spec.std, engine=cfg.engine, device=cfg.device,
                            cache_dir=default_cache_dir() if cfg.embedding_cache else None)


def run_experiment(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str], Callable] | None = None,
    after_task: Callable[[int, Any, ArrayDataset, np.ndarray], None] | None = None,
    open_set: bool = False,
) -> RunResult:
    """Train ``cfg.learner`` over the tasks, evaluating after each; save to ``out_dir`` if given.

    ``progress(label)`` returns a wrapper for iterables (e.g. a progress bar). ``after_task(t, learner, test,
    seen)`` is called after task ``t``'s evaluation, with the test set and the indices of its seen classes'
    images (e.g. to score the learner other ways). ``open_set``: also measure how the learner's runtime head tells
    the classes still to come from the seen ones (``edgecl.openset``; ``RunResult.open_set``).
    """
    distributed.check_learner(cfg.learner)
    log = distributed.main_only(log)  # under torch.distributed rank 0 logs and writes the run
    cfg, choice = resolve_backbone(cfg, log)
    bar = (progress if distributed.is_main() else None) or (lambda label: None)
    # rank 0 first: it fills the caches (pre-trained embedded backbone, rendered data) the others then read
    backbone = distributed.main_first(lambda: create_backbone(cfg.backbone, cfg.weights, cfg.img_size,
                                                              progress=bar("pre-training embedded backbone")))
    spec = backbone.spec
    train, test = distributed.main_first(lambda: _load_data(cfg, spec.input_size[1:]))
    scenario = ClassIncremental(train.num_classes, cfg.init_cls, cfg.increment, seed=cfg.order_seed)
    train, test = scenario.remap(train), scenario.remap(test)
    learner = create_learner(cfg.learner, backbone, device=cfg.device, backbones=create_backbone, **cfg.learner_args)
    learner.features = features = make_features(cfg, spec)
    metrics = IncrementalMetrics()
    probe = OpenSetProbe(scenario, train) if open_set else None
    log(f"{cfg.learner} on {cfg.dataset} with {spec.name} ({spec.weights}); {scenario.describe()}")
    for t, classes in enumerate(scenario.tasks):
        loader = distributed.make_loader(train, spec.input_size, spec.mean, spec.std, cfg.batch_size, shuffle=True,
                                         seed=t, indices=scenario.task_indices(train, t))
        learner.fit_task(loader, progress=bar(f"task {t + 1}/{scenario.num_tasks}"))
        seen = scenario.seen_indices(test, t)
        metrics.record(test.labels[seen], evaluate(learner, test, spec, indices=seen, features=features), scenario.tasks)
        for hook in (after_task, probe):
            if hook is not None:
                hook(t, learner, test, seen)
        chance = 100.0 / (classes[-1] + 1)
        log(
            f"task {t + 1}/{scenario.num_tasks}: classes {classes[0]}-{classes[-1]}, "
            f"top-1 on {classes[-1] + 1} seen classes = {metrics.overall[-1]:.2f}% (chance {chance:.2f}%)"
        )
    log(
        f"average incremental accuracy {metrics.average_incremental:.2f}%, last {metrics.last:.2f}%, "
        f"forgetting {metrics.forgetting:.2f}"
    )
    log(f"embeddings: {features.summary()}")
    result = RunResult(cfg, learner, scenario, metrics, list(train.class_names), train, test,
                       open_set=probe.summary() if probe else None, backbone_choice=choice)
    if out_dir is not None and distributed.is_main():
        _save(Path(out_dir), result, spec.name)
        log(f"saved run to {out_dir} (per-task accuracy: accuracy.csv, accuracy.png)")
    return result


def resolve_backbone(cfg: RunConfig, log: Callable[[str], None] = print) -> tuple[RunConfig, BackboneDecision]:
    """``cfg`` with its backbone and input size decided (``choose_backbone``: a real ImageNet backbone for an image
    folder unless one is named), and the decision; logs it, and its warning on the ``edgecl.experiment`` logger."""
    choice = choose_backbone(cfg.dataset, cfg.backbone, cfg.img_size, cfg.weights)
    if choice.chosen != "given":
        log(choice.describe())
    if choice.warning and distributed.is_main():
        _log.warning(f"WARNING: {choice.warning}")
    return replace(cfg, backbone=choice.backbone, img_size=choice.img_size), choice


def _load_data(cfg: RunConfig, image_size: tuple[int, int]):
    """The run's train and test sets at the backbone's input size."""
    return load_dataset(
        cfg.dataset,
        image_size=image_size,
        seed=cfg.data_seed,
        test_fraction=cfg.test_fraction,
        train_per_class=cfg.train_per_class,
        test_per_class=cfg.test_per_class,
    )


def _save(out_dir: Path, result: RunResult, backbone_name: str) -> None:
    """Writes the run directory: config with the class order, learner state, metrics and accuracy curves."""
    cfg, scenario, metrics = result.config, result.scenario, result.metrics
    config = asdict(cfg) | {"class_order": scenario.class_order}
    save_run(out_dir, config, result.learner, result.class_names, metrics.to_dict())
    seen = [len(task) + sum(len(x) for x in scenario.tasks[:t]) for t, task in enumerate(scenario.tasks)]
    write_accuracy_curves(out_dir, metrics.to_dict(), seen, f"{cfg.learner} on {cfg.dataset} ({backbone_name})")
