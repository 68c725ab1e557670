"""How much of ESN's accuracy its task vote loses: routing accuracy beside the accuracy inside the routed task.

ESN scores a class only inside the task its image is routed to (the energy vote over the task components,
``edgecl.learners.esn``), so an image routed to another task is always wrong and

    accuracy = routing accuracy x accuracy of the correctly routed images.

For one run of the table's protocol this trains ESN (``edgecl.experiment``, defaults unless
``--learner-arg``), then on the test images of every class seen: the share routed to their class's task
(per task too), the accuracy of the bundle's scoring (cosine prototypes of the gated features) among them,
and the paper's prediction (the routed task's linear classifier, ``ESN.paper_logits``) and a task-oracle
(the true task's gate) for comparison. Writes ``<out>.json`` and ``<out>.md`` with the command and machine.

    python benchmarks/esn_routing.py --dataset glyphs:200:within:96 --protocol B50%-Inc10 --seed 1993 \\
        --out benchmarks/results/esn-routing-glyphs200
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def train(a) -> object:
    """The ESN run of the command line (``edgecl.experiment.RunResult``)."""
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.grid import Protocol, num_classes

    proto = Protocol.parse(a.protocol)
    args = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.learner_arg)}
    cfg = RunConfig(dataset=a.dataset, backbone=a.backbone, learner="esn", learner_args=args,
                    init_cls=proto.init_cls(num_classes(a.dataset)), increment=proto.increment, order_seed=a.seed,
                    batch_size=a.batch_size)
    return run_experiment(cfg, log=lambda s: print(s, file=sys.stderr))


@torch.no_grad()
def predictions(learner, test, spec, batch: int = 256) -> dict[str, np.ndarray]:
    """Per test image: routed task, true task, bundle prediction, paper prediction, task-oracle prediction."""
    from edgecl_runtime.preprocess import preprocess

    emb, out = learner.embedding_module(), {k: [] for k in ("routed", "bundle", "paper", "oracle")}
    protos = F.normalize(learner.prototypes, dim=1)
    for i in range(0, len(test), batch):
        x = torch.from_numpy(preprocess(test.images[i : i + batch], spec.input_size, spec.mean, spec.std))
        feats, logits = emb.branches(x)
        out["routed"].append(learner.routed_tasks(x))
        out["bundle"].append(learner.logits(x).argmax(1))
        out["paper"].append(learner.paper_logits(x).argmax(1))
        task = learner.task_of_class[torch.from_numpy(test.labels[i : i + batch])]
        gated = torch.cat([F.normalize(f, dim=1) * (task == t)[:, None] for t, f in enumerate(feats)], dim=1)
        out["oracle"].append((F.normalize(gated, dim=1) @ protos.T).argmax(1))
    res = {k: torch.cat(v).numpy() for k, v in out.items()}
    res["task"] = learner.task_of_class[torch.from_numpy(test.labels)].numpy()
    return res


def summary(p: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    ok = p["routed"] == p["task"]
    pct = lambda m: round(100.0 * float(np.mean(m)), 2) if np.size(m) else None  # noqa: E731
    return {
        "images": int(len(labels)),
        "routing_accuracy": pct(ok),
        "accuracy": pct(p["bundle"] == labels),
        "accuracy_when_routed_right": pct(p["bundle"][ok] == labels[ok]),
        "paper_accuracy": pct(p["paper"] == labels),
        "task_oracle_accuracy": pct(p["oracle"] == labels),
        "routing_per_task": [pct(ok[p["task"] == t]) for t in range(int(p["task"].max()) + 1)],
        "routed_to_per_task": np.bincount(p["routed"], minlength=int(p["task"].max()) + 1).tolist(),
    }


def markdown(r: dict) -> str:
    s, m = r["summary"], r["machine"]
    rows = [("test images (all classes seen)", s["images"]), ("routed to their task (%)", s["routing_accuracy"]),
            ("accuracy, bundle scoring (%)", s["accuracy"]),
            ("accuracy of the correctly routed images (%)", s["accuracy_when_routed_right"]),
            ("accuracy, paper's prediction (routed task's classifier) (%)", s["paper_accuracy"]),
            ("accuracy with the true task's gate (oracle) (%)", s["task_oracle_accuracy"])]
    return "\n".join([
        f"# {r['name']}", "", "ESN's task vote against the accuracy inside the routed task, after the last task.", "",
        f"Command: `{r['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s); "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v), "",
        "| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
        "Routed to their task, per task (%): " + ", ".join(f"{v}" for v in s["routing_per_task"]), "",
        "Images routed to each task: " + ", ".join(str(v) for v in s["routed_to_per_task"]), "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="glyphs:200:within:96")
    ap.add_argument("--backbone", default="edgecl-vit-tiny")
    ap.add_argument("--protocol", default="B50%-Inc10")
    ap.add_argument("--seed", type=int, default=1993, help="class-order seed")
    ap.add_argument("--learner-arg", action="append", default=[], metavar="KEY=JSON", help="an ESN hyper-parameter")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch (benchmarks/cil_table.py's default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "esn-routing-glyphs200"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from edgecl.grid import machine_info

    run = train(a)
    p = predictions(run.learner, run.test, run.learner.backbone.spec)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"name": out.name, "command": shlex.join(["python", *sys.argv]), "machine": machine_info(a.threads),
              "config": vars(a), "summary": summary(p, run.test.labels)}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
