"""Zero-shot top-1 of a CLIP model on benchmark classes by name alone (docs/clip.md).

For each data set the test images are classified among all its classes by cosine similarity to the
text embeddings of the class names (``clip``) and to their text prototypes (``prototype``: what a
class added by name on the device is scored with); chance is 1 / classes. ``mixed``: a bundle whose first
``--known`` fraction of classes are prototypes of their training images (SimpleCIL) and the rest text
prototypes (added by name): top-1 on the test images of the by-name classes, and of the image classes.
The classes are never pre-training classes of ``edgecl-clip-tiny`` (``edgecl.pretrain.clip``). Writes
``benchmarks/results/<name>.{json,md}`` with the command and the machine.

    python benchmarks/clip_zero_shot.py [--model edgecl-clip-tiny] [--datasets glyphs:200 emoji:200 emoji:500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from edgecl.clip.zeroshot import class_text, image_embeddings, zero_shot
from edgecl.data import load_dataset
from edgecl.zoo import load_clip

RESULTS = Path(__file__).resolve().parent / "results"


def mixed(clip, train, test, known: int) -> dict[str, float]:
    """Top-1 of the by-name classes' and the image classes' test images in a bundle with both (module doc)."""
    feats = image_embeddings(clip, train.images)
    protos = [feats[torch.from_numpy(train.labels == k)].mean(0) for k in range(known)]
    protos += list(clip.text_prototypes([class_text(n) for n in train.class_names[known:]]))
    pred = (image_embeddings(clip, test.images) @ torch.nn.functional.normalize(torch.stack(protos), dim=-1).T).argmax(1)
    hit, new = pred.numpy() == test.labels, test.labels >= known
    return {"known_classes": known, "by_name_top1": float(hit[new].mean()), "image_classes_top1": float(hit[~new].mean()),
            "by_name_predicted_as_by_name": float((pred.numpy()[new] >= known).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="edgecl-clip-tiny")
    ap.add_argument("--text-weights", default=None, help="a text-side weights file instead of the model's own")
    ap.add_argument("--datasets", nargs="+", default=["glyphs:200", "emoji:200", "emoji:500"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="clip-zero-shot")
    ap.add_argument("--out", type=Path, help="output path without suffix (default: benchmarks/results/NAME)")
    ap.add_argument("--known", type=float, default=0.75, help="mixed bundle: fraction of classes learnt from images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip(args.model, args.text_weights)
    rows = []
    for spec in args.datasets:
        t0 = time.perf_counter()
        train, test = load_dataset(spec)
        r = zero_shot(clip, test.images, test.labels, test.class_names)
        r["mixed"] = mixed(clip, train, test, int(round(args.known * train.num_classes)))
        rows.append({"dataset": spec, **r, "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__},
        "model": args.model, "weights": clip.weights, "results": rows,
    }
    dest = args.out or RESULTS / args.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name(dest.name + ".json").write_text(json.dumps(out, indent=1) + "\n")
    md = [f"# Zero-shot top-1 of {args.model} by class name", "", f"Command: `{out['command']}`", "",
          f"Machine: {out['machine']}", "", "| data set (test split) | classes | images | chance | clip (text embedding) "
          "| prototype (text prototype) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['dataset']} | {r['classes']} | {r['images']} | {100 * r['chance']:.2f} % | {100 * r['clip']:.2f} % "
           f"| {100 * r['prototype']:.2f} % |" for r in rows]
    md += ["", f"Mixed bundle: the first {args.known:.0%} of the classes from their training images (class means), "
           "the rest added by name (text prototypes); top-1 among all classes.", "",
           "| data set | image classes | by-name classes: top-1 | predicted as some by-name class | image classes: top-1 |",
           "|---|---|---|---|---|"]
    md += [f"| {r['dataset']} | {r['mixed']['known_classes']} | {100 * r['mixed']['by_name_top1']:.2f} % "
           f"| {100 * r['mixed']['by_name_predicted_as_by_name']:.1f} % | {100 * r['mixed']['image_classes_top1']:.2f} % |"
           for r in rows]
    dest.with_name(dest.name + ".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
