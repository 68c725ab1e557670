"""A device app on the runtime's public API: watch a folder, predict new images, learn classes from sub-folders.

    python examples/folder_watch.py BUNDLE INCOMING [--once] [--every SECONDS] [--unknown auto|off|THRESHOLD]

- ``INCOMING/*.jpg`` (any image): each new image is predicted once; the result is printed and appended
  to ``INCOMING/predictions.jsonl`` (``label`` null for an unknown image, its ``unknown_score``, ``top_k``).
- An image unlike every class the bundle knows (its unknown score above the bundle's calibrated threshold,
  ``Bundle.predict(unknown="auto")``) is moved to ``INCOMING/to-label/``.
- To teach it, give it a name: move it into ``INCOMING/to-label/NAME/`` (a new folder NAME for a new class,
  or the name of a class the bundle knows). The app then moves it to ``INCOMING/NAME/`` and learns it there.
- ``INCOMING/NAME/*.jpg``: examples of class NAME; new files are learned (a new class, or the class extended).
  ``to-label`` is no class name (its folder holds the images waiting for one).
Everything survives restarts: the bundle journals what it learned, and ``INCOMING/.seen.json`` lists the
files already handled, so a restarted app goes on where it stopped.
"""

import argparse
import json
import time
from pathlib import Path

from edgecl_runtime import Bundle, EdgeclRuntimeError
from edgecl_runtime.io import IMAGE_SUFFIXES

TO_LABEL = "to-label"  # the folder of unknown images waiting for a name


def new_images(folder: Path, seen: set) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in seen)


def class_folders(folder: Path) -> list:
    """The sub-folders of ``folder`` that name classes (not hidden ones, not ``to-label``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != TO_LABEL)


def free_path(folder: Path, name: str, taken: set) -> Path:
    """``folder/name``, or ``folder/STEM-i.SUFFIX`` when that file exists or its name was handled before."""
    path, i = folder / name, 1
    while path.exists() or path.name in taken:
        path, i = folder / f"{Path(name).stem}-{i}{Path(name).suffix}", i + 1
    return path


def file_named(incoming: Path, seen: dict) -> None:
    """Images the user named (``to-label/NAME/*``) move to ``NAME/``, where ``learn`` takes them."""
    for sub in class_folders(incoming / TO_LABEL):
        for path in new_images(sub, set()):
            (incoming / sub.name).mkdir(exist_ok=True)
            path.replace(free_path(incoming / sub.name, path.name, set(seen.get(sub.name, []))))
        if not any(sub.iterdir()):
            sub.rmdir()


def learn(bundle: Bundle, incoming: Path, seen: dict, save) -> None:
    """New images of the class folders ``NAME/`` are learned as examples of class NAME."""
    for sub in class_folders(incoming):
        files = new_images(sub, set(seen.setdefault(sub.name, [])))
        if files:
            try:
                r = bundle.add_class(sub.name, files)
                print(f"learned {r.name!r} from {len(files)} image(s) ({r.total_examples} in all)")
            except EdgeclRuntimeError as exc:  # e.g. an unreadable file: the bundle is unchanged
                print(f"cannot learn {sub.name!r}: {exc}")
            save(seen[sub.name].extend(p.name for p in files))


def classify(bundle: Bundle, path: Path, unknown) -> dict:
    """The prediction record of one image: label (None when unknown), unknown score, top 3."""
    try:
        p = bundle.predict(path, top_k=3, unknown=unknown)
    except EdgeclRuntimeError as exc:
        return {"file": path.name, "label": None, "unknown_score": None, "top_k": [["error", str(exc)]]}
    return {"file": path.name, "label": p.labels[0], "unknown_score": round(float(p.unknown_scores[0]), 4),
            "top_k": [[c, round(s, 4)] for c, s in p.top_k[0]]}


def predict_new(bundle: Bundle, incoming: Path, seen: dict, save, unknown) -> None:
    """New images of ``INCOMING`` are predicted and logged; the unknown ones move to ``to-label/``."""
    for path in new_images(incoming, set(seen.setdefault("", []))):
        rec = classify(bundle, path, unknown)
        if rec["label"] is None and rec["unknown_score"] is not None:
            (incoming / TO_LABEL).mkdir(exist_ok=True)
            dst = free_path(incoming / TO_LABEL, path.name, set())
            path.replace(dst)
            rec["moved_to"] = f"{TO_LABEL}/{dst.name}"
            print(f"{path.name}: unknown (score {rec['unknown_score']}, nearest {rec['top_k'][0][0]}): "
                  f"moved to {rec['moved_to']}; name it by moving it into {TO_LABEL}/NAME/")
        else:
            print(f"{path.name}: {rec['top_k']}")
        with open(incoming / "predictions.jsonl", "a") as log:
            log.write(json.dumps(rec) + "\n")
        save(seen[""].append(path.name))


def unknown_option(value: str) -> str:
    """``--unknown``: auto, off or a finite number (kept as text)."""
    try:
        if value in ("auto", "off") or abs(float(value)) < float("inf"):
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected auto, off or a number, got {value!r}")


def unknown_threshold(bundle: Bundle, option: str):
    """``predict(unknown=...)`` of ``--unknown``: auto (the calibrated threshold; none without one), off, a number."""
    if option == "off":
        return None
    if option != "auto":
        return float(option)
    if (bundle.manifest.get("unknown") or {}).get("threshold") is None:
        print("this bundle has no calibrated unknown threshold: no image is moved to to-label/ (see --unknown)")
        return None
    return "auto"


def step(bundle: Bundle, incoming: Path, seen: dict, save, unknown="auto") -> None:
    bundle.refresh()  # updates by other processes (edgecl serve, the CLI) count too
    file_named(incoming, seen)
    learn(bundle, incoming, seen, save)
    predict_new(bundle, incoming, seen, save, unknown)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Unknown images move to INCOMING/{TO_LABEL}/; to teach one, move it into INCOMING/{TO_LABEL}/NAME/ "
               "and the app learns it as class NAME (then keeps it in INCOMING/NAME/).")
    ap.add_argument("bundle")
    ap.add_argument("incoming", type=Path)
    ap.add_argument("--once", action="store_true", help="handle what is there now, then exit")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between two looks at the folder")
    ap.add_argument("--unknown", default="auto", type=unknown_option, metavar="auto|off|THRESHOLD",
                    help=f"which images are unknown (moved to {TO_LABEL}/): auto, those scoring above the bundle's "
                         "calibrated threshold (none if it has none); off, none; a number, those scoring above it")
    args = ap.parse_args()
    bundle, state = Bundle.load(args.bundle), args.incoming / ".seen.json"
    unknown = unknown_threshold(bundle, args.unknown)
    seen = json.loads(state.read_text()) if state.exists() else {}

    def save(_=None):  # after every action, atomically: a restart neither repeats nor skips one
        (args.incoming / ".seen.tmp").write_text(json.dumps(seen))
        (args.incoming / ".seen.tmp").replace(state)

    while True:
        step(bundle, args.incoming, seen, save, unknown)
        if args.once:
            break
        time.sleep(args.every)


if __name__ == "__main__":
    main()
