"""Write image folders to try edgecl on before using your own photos.

    python examples/make_image_folder.py my_images new_images [--classes 20] [--new-classes 2] [--per-class 40]

``my_images/<class>/*.png``: ``--classes`` classes of the embedded shapes set, ``--per-class`` images each (the
layout ``edgecl train --dataset my_images`` reads; ``my_images/train/<class>`` and ``my_images/test/<class>`` work
too). ``new_images/<class>/*.png``: ``--new-classes`` further classes, for adding on the device. Your own photos go in the
same layout, any size and format Pillow reads.
"""

import argparse
from pathlib import Path

from PIL import Image

from edgecl.data import DataError, make_shapes


def write(root: Path, images, labels, names, classes) -> None:
    for c in classes:
        folder = root / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images[labels == c]):
            Image.fromarray(img).save(folder / f"{i:03d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder of the training classes")
    ap.add_argument("new", type=Path, help="folder of the classes to add on the device")
    ap.add_argument("--classes", type=int, default=20, help="classes to train on")
    ap.add_argument("--new-classes", dest="new_classes", type=int, default=2, help="classes to add on the device")
    ap.add_argument("--per-class", type=int, default=40, help="images per class")
    a = ap.parse_args()
    if a.classes < 1 or a.new_classes < 0 or a.per_class < 1:
        ap.error("--classes and --per-class must be >= 1, --new-classes >= 0")
    try:
        data, _ = make_shapes(a.classes + a.new_classes, a.per_class, 1, seed=0)
    except DataError as exc:  # more classes than the shapes set has
        ap.error(str(exc))
    write(a.out, data.images, data.labels, data.class_names, range(a.classes))
    write(a.new, data.images, data.labels, data.class_names, range(a.classes, a.classes + a.new_classes))
    print(f"{a.classes} classes in {a.out}/, {a.new_classes} in {a.new}/ ({a.per_class} images each)")


if __name__ == "__main__":
    main()
