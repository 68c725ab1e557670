"""Class-incremental results table: learners x backbones x datasets x protocols x seeds.

Runs ``edgecl.experiment.run_experiment`` over the grid and writes, under
``--out`` (default ``benchmarks/results``):

* ``<name>.json``: per run the config, accuracy after each task (on all seen
  classes) and the accuracy matrix, average incremental and last accuracy,
  forgetting, wall time; plus the exact command line and the machine (CPU model,
  cores, threads, torch/timm/onnxruntime versions). Rewritten after every run, so
  an interrupted grid keeps what it finished and ``--resume`` skips those runs.
* ``<name>.md``: mean ± std over seeds per (dataset, protocol, learner, backbone),
  rewritten with the JSON.
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

Parallel runs: ``--ray local`` runs the grid as Ray tasks on this machine
(``--cpus-per-run`` CPUs each), ``--ray auto`` or ``--ray HOST:6379`` on a Ray
cluster (docs/grids.md); results arrive in completion order and are written as
they come, in grid order, with the same numbers as a serial run. The grid logic
(configs, run keys, one run, resuming, merging) is ``edgecl.grid``.

Example (the SimpleCIL table of issue 5)::

    python benchmarks/cil_table.py --name simplecil-glyphs200 --learners simplecil \\
        --backbones edgecl-resnet10t,edgecl-vit-tiny,mobilenetv2-imagenet@64,efficientnet-lite0-imagenet@64 \\
        --datasets glyphs:200:within,glyphs:200:cross --protocols B0-Inc10,B50%-Inc10 --seeds 1993,1994,1995
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------- the grid
def grid_spec(args: argparse.Namespace):
    """The ``edgecl.grid.GridSpec`` of the command line."""
    from edgecl.grid import GridSpec, Protocol, parse_backbones, split_list

    learner_args = json.loads(args.learner_args) if args.learner_args else {}
    try:
        return GridSpec(
            learners=split_list(args.learners),
            backbones=parse_backbones(args.backbones, args.img_size, dict(w.split("=", 1) for w in args.weights)),
            datasets=split_list(args.datasets), protocols=[Protocol.parse(p) for p in split_list(args.protocols)],
            seeds=[int(s) for s in split_list(args.seeds)], learner_args=learner_args, data_seed=args.data_seed,
            train_per_class=args.train_per_class, test_per_class=args.test_per_class, batch_size=args.batch_size,
            engine=args.engine, embedding_cache=args.cache, open_set=args.open_set,
        )
    except ValueError as exc:
        raise SystemExit(f"cil_table: {exc}") from exc


def run_grid(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Run (or resume) the grid of ``args``; ``<name>.json`` and ``.md`` are rewritten after every run."""
    from edgecl.grid import machine_info, make_executor, read_json, run_grid as run, write_json

    spec = grid_spec(args)
    threads = args.threads or args.cpus_per_run or 1
    out = Path(args.out)
    out_json = out / f"{args.name}.json"
    previous = read_json(out_json)["runs"] if args.resume and out_json.is_file() else []
    try:
        executor = make_executor(args.ray, args.cpus_per_run or threads, args.ray_num_cpus)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"cil_table: {exc}") from exc
    try:
        header = {
            "name": args.name,
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_info(threads),
            "executor": executor.describe(),
            "grid": spec.axes(),
            "notes": list(args.note),
        }

        def save(report: dict[str, Any]) -> None:
            write_json(report, out_json)
            (out / f"{args.name}.md").write_text(markdown(report), encoding="utf-8")

        report = run(spec, executor, header, threads=threads, previous=previous, save=save, log=log)
    finally:
        executor.close()
    write_json(report, out_json)
    return report


# ------------------------------------------------------------ table and plot
def run_groups(report: dict[str, Any]) -> dict[tuple[str, str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in report["runs"]:
        learner, hp = r["config"]["learner"], r["config"]["learner_args"]
        key = (r["config"]["dataset"], r["protocol"], learner + (f" {json.dumps(hp)}" if hp else ""), r["backbone"])
        groups.setdefault(key, []).append(r)
    return groups


def mean_std(values: list[float]) -> str:
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
    for (dataset, proto, learner, backbone), runs in run_groups(report).items():
        size = "x".join(map(str, runs[0]["backbone_spec"]["input_size"][1:]))
        lines.append(
            f"| {dataset} | {proto} | {learner} | {backbone} | {size} | "
            f"{mean_std([r['average_incremental'] for r in runs])} | {mean_std([r['last'] for r in runs])} | "
            f"{mean_std([r['forgetting'] for r in runs])} | {len(runs)} | {np.mean([r['wall_time_s'] for r in runs]):.1f} |"
        )
    ex = report.get("executor", {})
    if ex.get("kind") == "ray":
        lines += ["", (f"Runs ran in parallel as Ray tasks ({ex['cpus_per_run']} CPU(s) each, {ex.get('cluster_cpus') or 0:g} "
                       f"CPUs on {ex.get('nodes')} node(s)): time/run is each run's own wall time while sharing the "
                       "machine(s).")]
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
    for (dataset, proto, learner, backbone), runs in run_groups(report).items():
        panels.setdefault((dataset, proto), {})[f"{learner} / {backbone}"] = runs
    # one colour per learner / backbone in every panel (panels list their lines in different orders);
    # with many lines: 20 colours, a line style per backbone and one legend below the panels
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    many = len(labels) > 10
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {label: (plt.cm.tab20(i % 20) if many or i >= len(cycle) else cycle[i]) for i, label in enumerate(labels)}
    backbones = list(dict.fromkeys(label.rsplit(" / ", 1)[-1] for label in labels))
    style = {label: ["-", "--", ":", "-."][backbones.index(label.rsplit(" / ", 1)[-1]) % 4] if many else "-"
             for label in labels}
    n = len(panels)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    legend_h = 0.2 * ((len(labels) + 2) // 3) + 0.3 if many else 0.0
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows + legend_h), squeeze=False)
    for ax, ((dataset, proto), lines) in zip(axes.flat, panels.items()):
        for label, runs in lines.items():
            x = runs[0]["classes_seen"]
            acc = np.array([r["accuracy_per_task"] for r in runs])
            mean, std = acc.mean(0), acc.std(0)
            ax.plot(x, mean, marker="o", ms=3, label=label, color=colour[label], ls=style[label])
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=colour[label])
        ax.set_title(f"{dataset}, {proto}")
        ax.set_xlabel("classes seen")
        ax.set_ylabel("top-1 on seen classes (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if not many:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if many:
        handles = [plt.Line2D([], [], color=colour[lb], ls=style[lb], marker="o", ms=3) for lb in labels]
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, legend_h / (4.2 * rows + legend_h), 1, 1))
    else:
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
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: --cpus-per-run, else 1; 1 when other work shares the CPU)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="no embedding cache: every run embeds every image again, after every task")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "torch-fused", "onnx"],
                   help="embedding engine of frozen modules (see edgecl.features.engines)")
    p.add_argument("--open-set", action="store_true",
                   help="also measure unknown scores (edgecl.openset: the classes still to come are the unknowns)")
    p.add_argument("--resume", action="store_true", help="keep runs already in <name>.json, run only the missing ones")
    ray = p.add_argument_group("Ray (docs/grids.md)", "run the grid's runs in parallel as Ray tasks (pip install 'edgecl[grid]')")
    ray.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                     help="local: a private Ray instance on this machine; auto: the cluster `ray start` runs here; "
                          "ADDRESS: a cluster (HOST:6379 or ray://HOST:10001)")
    ray.add_argument("--cpus-per-run", type=int, default=None, metavar="N",
                     help="CPUs Ray reserves for each run (default --threads)")
    ray.add_argument("--ray-num-cpus", type=int, default=None, metavar="N",
                     help="--ray local: CPUs of the instance (default: all)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="output directory")
    p.add_argument("--table-only", action="store_true", help="rewrite .md and .png from an existing .json")
    p.add_argument("--merge", default=None, metavar="NAME,NAME...",
                   help="write <name> from the runs of these result files (no training)")
    p.add_argument("--note", action="append", default=[], help="a paragraph for the .md (kept in the .json)")
    return p


def merge_files(name: str, sources: str, out: Path, notes: list[str]) -> dict[str, Any]:
    """``--merge``: one report from ``<out>/<source>.json`` for each source (``edgecl.grid.merge_reports``)."""
    from edgecl.grid import merge_reports, read_json, split_list

    reports = {}
    for source in split_list(sources):
        path = out / f"{source}.json"
        if not path.is_file():
            raise SystemExit(f"--merge: no results file {path}")
        reports[source] = read_json(path)
    return merge_reports(name, shlex.join([Path(sys.executable).name, *sys.argv]), reports, notes)


def main(argv: list[str] | None = None) -> int:
    from edgecl.grid import read_json, write_json

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if (args.cpus_per_run is not None or args.ray_num_cpus is not None) and args.ray is None:
        raise SystemExit("cil_table: --cpus-per-run and --ray-num-cpus need --ray")
    if args.table_only:
        report = read_json(out / f"{args.name}.json")
        if args.note:
            report["notes"] = list(args.note)
            write_json(report, out / f"{args.name}.json")
    elif args.merge:
        report = merge_files(args.name, args.merge, out, args.note)
        write_json(report, out / f"{args.name}.json")
    else:
        report = run_grid(args, log=lambda s: print(s, flush=True))
    for path in write_outputs(report, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
