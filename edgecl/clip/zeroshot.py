"""Zero-shot classification with a CLIP model: images scored against the text embeddings of class names.

Class names of the benchmarks become texts with ``class_text``: a glyphs class ``U+00E9`` is the
code point's Unicode name (``LATIN SMALL LETTER E WITH ACUTE``), an emoji class is its name already
(``grinning face``); the byte tokenizer upper-cases ASCII, so both read as Unicode names.

Two scorings (``zero_shot``): ``clip`` = cosine of the image embedding to the text embedding (CLIP's
own zero-shot), ``prototype`` = cosine to the text prototype (``ClipModel.text_prototypes``: what
a class added by name on the device is scored with).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np
import torch

from edgecl_runtime.preprocess import preprocess

from .model import ClipModel

_CODEPOINT = re.compile(r"^U\+([0-9A-F]{4,6})$")


def class_text(name: str) -> str:
    """The text of a class name: the Unicode name of a ``U+XXXX`` class, else the name itself."""
    m = _CODEPOINT.match(name)
    if m:
        return unicodedata.name(chr(int(m.group(1), 16)), name)
    return name


@torch.no_grad()
def image_embeddings(clip: ClipModel, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Image embeddings ``(N, embed_dim)`` of uint8 ``(N, H, W, 3)`` images, preprocessed for ``clip``."""
    cfg, out = clip.cfg, []
    clip.eval()
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(preprocess(np.asarray(images[i : i + batch_size]), cfg.input_size, cfg.mean, cfg.std))
        out.append(clip.encode_image(x))
    return torch.cat(out)


def top1(scores: torch.Tensor, labels: np.ndarray) -> float:
    return float((scores.argmax(1).numpy() == np.asarray(labels)).mean())


@torch.no_grad()
def zero_shot(clip: ClipModel, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Top-1 accuracy of ``images`` over ``class_names`` by name alone: ``clip`` and ``prototype`` (module doc),
    with ``chance`` = 1 / number of classes."""
    texts = [class_text(n) for n in class_names]
    feats = torch.nn.functional.normalize(image_embeddings(clip, images), dim=-1)
    text = clip.text_features(texts)
    protos = torch.nn.functional.normalize(clip.prototypes_from_text(text), dim=-1)
    return {"clip": top1(feats @ text.T, labels), "prototype": top1(feats @ protos.T, labels),
            "chance": 1.0 / len(class_names), "images": int(len(labels)), "classes": len(class_names)}
