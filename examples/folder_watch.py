"""A device app on the runtime's public API: watch a folder, predict new images, learn classes from sub-folders.

    python examples/folder_watch.py BUNDLE INCOMING [--once] [--every SECONDS]

- ``INCOMING/*.jpg`` (any image): each new image is predicted once; the result is printed and appended
  to ``INCOMING/predictions.jsonl``.
- ``INCOMING/NAME/*.jpg``: examples of class NAME; new files are learned (a new class, or the class extended).
Everything survives restarts: the bundle journals what it learned, and ``INCOMING/.seen.json`` lists the
files already handled, so a restarted app goes on where it stopped.
"""

import argparse
import json
import time
from pathlib import Path

from edgecl_runtime import Bundle, EdgeclRuntimeError
from edgecl_runtime.io import IMAGE_SUFFIXES


def new_images(folder: Path, seen: set) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in seen)


def step(bundle: Bundle, incoming: Path, seen: dict, save) -> None:
    bundle.refresh()  # updates by other processes (edgecl serve, the CLI) count too
    for sub in sorted(p for p in incoming.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = new_images(sub, set(seen.setdefault(sub.name, [])))
        if files:
            try:
                r = bundle.add_class(sub.name, files)
                print(f"learned {r.name!r} from {len(files)} image(s) ({r.total_examples} in all)")
            except EdgeclRuntimeError as exc:  # e.g. an unreadable file: the bundle is unchanged
                print(f"cannot learn {sub.name!r}: {exc}")
            save(seen[sub.name].extend(p.name for p in files))
    for path in new_images(incoming, set(seen.setdefault("", []))):
        try:
            top = [[c, round(s, 4)] for c, s in bundle.predict(path, top_k=3).top_k[0]]
        except EdgeclRuntimeError as exc:
            top = [["error", str(exc)]]
        print(f"{path.name}: {top}")
        with open(incoming / "predictions.jsonl", "a") as log:
            log.write(json.dumps({"file": path.name, "top_k": top}) + "\n")
        save(seen[""].append(path.name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("incoming", type=Path)
    ap.add_argument("--once", action="store_true", help="handle what is there now, then exit")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between two looks at the folder")
    args = ap.parse_args()
    bundle, state = Bundle.load(args.bundle), args.incoming / ".seen.json"
    seen = json.loads(state.read_text()) if state.exists() else {}

    def save(_=None):  # after every action, atomically: a restart neither repeats nor skips one
        (args.incoming / ".seen.tmp").write_text(json.dumps(seen))
        (args.incoming / ".seen.tmp").replace(state)

    while True:
        step(bundle, args.incoming, seen, save)
        if args.once:
            break
        time.sleep(args.every)


if __name__ == "__main__":
    main()
