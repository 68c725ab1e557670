"""Class-incremental results table: learners x backbones x datasets x protocols x seeds.

Runs ``edgecl.experiment.run_experiment`` over the grid and writes, under
``--out`` (default ``benchmarks/results``):

* ``<name>.json``: per run the config, accuracy after each task (on all seen
  classes) and the accuracy matrix, average incremental and last accuracy,
  forgetting, wall time; plus the exact command line and the machine (CPU model,
  cores, threads, torch/timm/onnxruntime versions). Rewritten after every run, so
  an interrupted grid keeps what it finished and ``--resume`` skips those runs.
* ``<name>.md``: mean ± std over seeds per (dataset, protocol, learner, backbone).
* ``<name>.png``: accuracy vs. number of classes seen, one line per learner/backbone,
  one panel per dataset and protocol (mean over seeds, band = ± std).

Protocols: ``B0-Inc10`` (every task 10 classes), ``B50%-Inc10`` (half of the
classes first, then 10 per task), ``B20-Inc5`` (absolute base). Seeds are
class-order seeds (``RunConfig.order_seed``); the data (``--data-seed``) stays fixed.

Backbones are edgecl names (``edgecl backbones``) or timm names, with an
optional input size: ``mobilenetv2-imagenet@64``; ``--img-size`` sets it for every
backbone that can change it (not the embedded ones). A timm model needs
``--weights NAME=FILE``.

Embeddings: every run embeds through ``edgecl.features`` (the experiment's
``FeatureExtractor``): each image is embedded once per frozen module state and
kept under ``$EDGECL_CACHE_DIR/embeddings``, so the runs of a grid that share a
backbone and data set (every seed, protocol and frozen-backbone learner) reuse
one computation; ``--engine`` picks the engine (default auto), ``--no-cache``
recomputes everything in every run (as before the cache existed).

Example (the SimpleCIL table of issue 5)::

    python benchmarks/cil_table.py --name simplecil-glyphs200 --learners simplecil \\
        --backbones edgecl-resnet10t,edgecl-vit-tiny,mobilenetv2-imagenet@64,efficientnet-lite0-imagenet@64 \\
        --datasets glyphs:200:within,glyphs:200:cross --protocols B0-Inc10,B50%-Inc10 --seeds 1993,1994,1995
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------- grid parsing
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
    name: str
    img_size: int | None
    weights: str | None

    @property
    def label(self) -> str:
        return self.name + (f"@{self.img_size}" if self.img_size else "")


def parse_backbones(text: str, img_size: int | None, weights: dict[str, str]) -> list[BackboneChoice]:
    from edgecl.zoo import EMBEDDED

    out = []
    for item in _split(text):
        name, _, size = item.partition("@")
        size_v = int(size) if size else (None if name in EMBEDDED else img_size)
        out.append(BackboneChoice(name, size_v, weights.get(name)))
    return out


def _split(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"empty list: {text!r}")
    return items


# ----------------------------------------------------------------- machine info
def machine_info(threads: int) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("timm", "onnxruntime", "onnx"):
        try:
            versions[mod] = __import__(mod).__version__ if mod != "timm" else _timm_version()
        except ImportError:
            versions[mod] = None
    from edgecl import __version__

    versions["edgecl"] = __version__
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "versions": versions,
    }


def _timm_version() -> str:
    from edgecl._compat import import_timm

    return import_timm().__version__


# ------------------------------------------------------------------- the grid
def _num_classes(dataset: str, data_seed: int, train_per_class: int, test_per_class: int) -> int:
    from edgecl.data import load_dataset

    train, _ = load_dataset(dataset, seed=data_seed, train_per_class=train_per_class, test_per_class=test_per_class)
    return train.num_classes


def run_key(run: dict[str, Any]) -> str:
    c = run["config"]
    return json.dumps([c["learner"], c["learner_args"], run["backbone"], c["dataset"], run["protocol"], c["order_seed"],
                       c["data_seed"], c["train_per_class"], c["test_per_class"]], sort_keys=True)


def run_grid(args: argparse.Namespace, log=print) -> dict[str, Any]:
    import torch

    from edgecl.experiment import RunConfig, run_experiment

    torch.set_num_threads(args.threads)
    learners, datasets = _split(args.learners), _split(args.datasets)
    protocols = [Protocol.parse(p) for p in _split(args.protocols)]
    seeds = [int(s) for s in _split(args.seeds)]
    weights = dict(w.split("=", 1) for w in args.weights)
    backbones = parse_backbones(args.backbones, args.img_size, weights)
    learner_args = json.loads(args.learner_args) if args.learner_args else {}
    if not isinstance(learner_args, dict) or set(learner_args) - set(learners):
        raise SystemExit(f"--learner-args must map learners of --learners to hyper-parameters, got {args.learner_args}")

    out_json = Path(args.out) / f"{args.name}.json"
    previous = []
    if args.resume and out_json.is_file():
        previous = json.loads(out_json.read_text())["runs"]
    done = {run_key(r): r for r in previous}
    reached: set[str] = set()
    report = {
        "name": args.name,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.threads),
        "grid": {"learners": learners, "backbones": [b.label for b in backbones], "datasets": datasets,
                 "protocols": [p.label for p in protocols], "seeds": seeds},
        "notes": list(args.note),
        "runs": [],
    }
    n_classes = {d: _num_classes(d, args.data_seed, args.train_per_class, args.test_per_class) for d in datasets}
    total = len(learners) * len(backbones) * len(datasets) * len(protocols) * len(seeds)
    i = 0
    # Backbone-major order: one backbone's embeddings are reused by every run that follows.
    for bb in backbones:
        for dataset in datasets:
            for learner in learners:
                for proto in protocols:
                    for seed in seeds:
                        i += 1
                        cfg = RunConfig(
                            dataset=dataset, backbone=bb.name, weights=bb.weights, img_size=bb.img_size,
                            learner=learner, learner_args=learner_args.get(learner, {}), init_cls=proto.init_cls(n_classes[dataset]),
                            increment=proto.increment, order_seed=seed, data_seed=args.data_seed,
                            batch_size=args.batch_size, train_per_class=args.train_per_class,
                            test_per_class=args.test_per_class, engine=args.engine, embedding_cache=args.cache,
                        )
                        stub = {"config": asdict(cfg), "backbone": bb.label, "protocol": proto.label}
                        reached.add(run_key(stub))
                        if run_key(stub) in done:
                            report["runs"].append(done[run_key(stub)])
                            log(f"[{i}/{total}] {learner} {bb.label} {dataset} {proto.label} seed {seed}: done before")
                            continue
                        t0 = time.perf_counter()
                        result = run_experiment(cfg, log=lambda s: None)
                        wall = time.perf_counter() - t0
                        features = result.learner.features
                        m = result.metrics
                        seen = np.cumsum([len(t) for t in result.scenario.tasks]).tolist()
                        spec = result.learner.backbone.spec
                        report["runs"].append({
                            **stub,
                            "num_classes": n_classes[dataset],
                            "classes_seen": seen,
                            "accuracy_per_task": m.overall,
                            "accuracy_matrix": m.matrix,
                            "average_incremental": m.average_incremental,
                            "last": m.last,
                            "forgetting": m.forgetting,
                            "wall_time_s": round(wall, 2),
                            "embedding_cache": args.cache,
                            "embedding_engines": sorted(set(features.engines_used.values())),
                            "embedding_store": features.store_counts(),
                            "backbone_spec": {"name": spec.name, "timm_name": spec.timm_name,
                                              "input_size": list(spec.input_size), "weights_sha256": spec.weights_sha256},
                        })
                        log(
                            f"[{i}/{total}] {learner} {bb.label} {dataset} {proto.label} seed {seed}: "
                            f"avg-inc {m.average_incremental:.2f} last {m.last:.2f} forgetting {m.forgetting:.2f} "
                            f"({wall:.1f} s; embeddings {features.summary()})"
                        )
                        write_json(with_previous(report, done, reached), out_json)
    report = with_previous(report, done, reached)
    write_json(report, out_json)
    return report


def with_previous(report: dict[str, Any], done: dict[str, dict], reached: set[str]) -> dict[str, Any]:
    """The report plus the resumed runs the grid has not reached (yet, or at all): an interrupted
    ``--resume`` must not drop runs that were in the file."""
    return {**report, "runs": report["runs"] + [r for k, r in done.items() if k not in reached]}


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def merge_reports(name: str, sources: list[str], out: Path, notes: list[str]) -> dict[str, Any]:
    """One report from the runs of several result files (``--merge``): grids united, each source's
    command kept, runs deduplicated by ``run_key`` (the first source wins)."""
    reports = []
    for source in sources:
        path = out / f"{source}.json"
        if not path.is_file():
            raise SystemExit(f"--merge: no results file {path}")
        reports.append(json.loads(path.read_text()))
    grid: dict[str, list] = {}
    for r in reports:
        for k, values in r["grid"].items():
            grid.setdefault(k, [])
            grid[k] += [v for v in values if v not in grid[k]]
    runs: dict[str, dict] = {}
    for r in reports:
        for run in r["runs"]:
            runs.setdefault(run_key(run), run)
    merged_notes = list(notes)
    for r in reports:
        merged_notes += [n for n in r.get("notes", []) if n not in merged_notes]
    return {
        "name": name,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "sources": [{"name": s, "command": r["command"]} for s, r in zip(sources, reports)],
        "machine": reports[0]["machine"],
        "grid": grid,
        "notes": merged_notes,
        "runs": list(runs.values()),
    }


# ------------------------------------------------------------ table and plot
def _groups(report: dict[str, Any]) -> dict[tuple[str, str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in report["runs"]:
        learner, hp = r["config"]["learner"], r["config"]["learner_args"]
        key = (r["config"]["dataset"], r["protocol"], learner + (f" {json.dumps(hp)}" if hp else ""), r["backbone"])
        groups.setdefault(key, []).append(r)
    return groups


def _pm(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# {report['name']}",
        "",
        (
            "Class-incremental top-1 (%) on all classes seen so far; mean ± std over class-order seeds "
            f"{', '.join(map(str, report['grid']['seeds']))}. Avg-inc: mean over tasks of the accuracy after each "
            "task; Last: after the final task; Forgetting: mean drop of each old task from its best accuracy."
        ),
        "",
        f"Command: `{report['command']}`",
        "",
        *[f"Runs of `{src['name']}.json`, made by: `{src['command']}`\n" for src in report.get("sources", [])],
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s); "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "",
        *[p for note in report.get("notes", []) for p in (note, "")],
        "| dataset | protocol | learner | backbone | input | Avg-inc | Last | Forgetting | seeds | time/run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, proto, learner, backbone), runs in _groups(report).items():
        size = "x".join(map(str, runs[0]["backbone_spec"]["input_size"][1:]))
        lines.append(
            f"| {dataset} | {proto} | {learner} | {backbone} | {size} | "
            f"{_pm([r['average_incremental'] for r in runs])} | {_pm([r['last'] for r in runs])} | "
            f"{_pm([r['forgetting'] for r in runs])} | {len(runs)} | {np.mean([r['wall_time_s'] for r in runs]):.1f} |"
        )
    if any(r.get("embedding_cache") for r in report["runs"]):
        lines += [
            "",
            (
                "time/run: wall time of one run; with the embedding cache the first run of each (backbone, "
                "dataset) computes every embedding and later runs reuse them, so the mean mixes both."
            ),
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for (dataset, proto, learner, backbone), runs in _groups(report).items():
        panels.setdefault((dataset, proto), {})[f"{learner} / {backbone}"] = runs
    # one colour per learner / backbone in every panel (panels list their lines in different orders)
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {label: (cycle[i] if i < len(cycle) else plt.cm.tab20(i % 20)) for i, label in enumerate(labels)}
    n = len(panels)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, ((dataset, proto), lines) in zip(axes.flat, panels.items()):
        for label, runs in lines.items():
            x = runs[0]["classes_seen"]
            acc = np.array([r["accuracy_per_task"] for r in runs])
            mean, std = acc.mean(0), acc.std(0)
            ax.plot(x, mean, marker="o", ms=3, label=label, color=colour[label])
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=colour[label])
        ax.set_title(f"{dataset}, {proto}")
        ax.set_xlabel("classes seen")
        ax.set_ylabel("top-1 on seen classes (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    md, png = out / f"{report['name']}.md", out / f"{report['name']}.png"
    md.write_text(markdown(report), encoding="utf-8")
    plot(report, png)
    return [out / f"{report['name']}.json", md, png]


# ----------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="results file stem: <out>/<name>.{json,md,png}")
    p.add_argument("--learners", default="simplecil", help="comma-separated (see `edgecl learners`)")
    p.add_argument("--learner-args", default=None, help="JSON: learner -> hyper-parameters, e.g. '{\"ranpac\": {\"M\": 5000}}'")
    p.add_argument("--backbones", default="edgecl-resnet10t", help="comma-separated NAME[@IMG_SIZE]")
    p.add_argument("--img-size", type=int, default=None, help="input size for backbones that can change it")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=FILE", help="weights of a timm backbone")
    p.add_argument("--datasets", default="shapes", help="comma-separated dataset specs (shapes:N, glyphs:N:cross, ...)")
    p.add_argument("--protocols", default="B0-Inc10,B50%-Inc10", help="comma-separated B<base>[%%]-Inc<n>")
    p.add_argument("--seeds", default="1993,1994,1995", help="comma-separated class-order seeds")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--train-per-class", type=int, default=30)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 when other work shares the CPU)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="no embedding cache: every run embeds every image again, after every task")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "torch-fused", "onnx"],
                   help="embedding engine of frozen modules (see edgecl.features.engines)")
    p.add_argument("--resume", action="store_true", help="keep runs already in <name>.json")
    p.add_argument("--out", default=str(RESULTS_DIR), help="output directory")
    p.add_argument("--table-only", action="store_true", help="rewrite .md and .png from an existing .json")
    p.add_argument("--merge", default=None, metavar="NAME,NAME...",
                   help="write <name> from the runs of these result files (no training)")
    p.add_argument("--note", action="append", default=[], help="a paragraph for the .md (kept in the .json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        report = json.loads((out / f"{args.name}.json").read_text())
        if args.note:
            report["notes"] = list(args.note)
            write_json(report, out / f"{args.name}.json")
    elif args.merge:
        report = merge_reports(args.name, _split(args.merge), out, args.note)
        write_json(report, out / f"{args.name}.json")
    else:
        report = run_grid(args, log=lambda s: print(s, flush=True))
    for path in write_outputs(report, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
