"""Load an edgecl bundle, predict, and add classes on the device."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import storage
from .errors import (
    CorruptBundleError,
    DeviceUnavailableError,
    InvalidInputError,
    MissingFileError,
)
from .heads import head_class
from .manifest import MANIFEST_NAME, file_entry, read_manifest, verify_files
from .preprocess import preprocess

DEVICES = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass
class Prediction:
    """Top-k classes per image: ``labels[i]`` / ``scores[i]`` are the best ones."""

    labels: list[str]
    scores: np.ndarray  # (N,) score of the top class
    indices: np.ndarray  # (N,) class index of the top class
    top_k: list[list[tuple[str, float]]] = field(default_factory=list)


@dataclass
class AddClassResult:
    name: str
    created: bool  # False: examples extended an existing class
    examples_added: int
    total_examples: int
    num_classes: int
    seconds: float


def _providers(device: str) -> list[str]:
    if device not in DEVICES:
        raise InvalidInputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU_EP]
    if CUDA_EP in available:
        return [CUDA_EP, CPU_EP]
    if device == "cuda":
        raise DeviceUnavailableError(
            f"device='cuda' but onnxruntime offers only {available}; install onnxruntime-gpu "
            "(pip install 'edgecl[gpu]') with a matching CUDA, or use device='cpu'"
        )
    return [CPU_EP]


class Bundle:
    """An exported model on the device: ONNX backbone + numpy head + manifest."""

    def __init__(self, path: Path, manifest: dict[str, Any], head, session: ort.InferenceSession):
        self.path = path
        self.manifest = manifest
        self.head = head
        self.session = session
        self._input_name = session.get_inputs()[0].name

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, device: str = "auto", verify: bool = True) -> "Bundle":
        """Open a bundle; ``device`` is ``auto`` (CUDA when onnxruntime has it), ``cpu`` or ``cuda``.

        Every file is checked against the manifest's sha256 unless ``verify=False``.
        """
        path = Path(path)
        providers = _providers(device)
        manifest = read_manifest(path)
        if verify:
            verify_files(path, manifest)
        head = cls._read_head(path, manifest)
        backbone_file = manifest["backbone"]["file"]
        try:
            session = ort.InferenceSession(str(path / backbone_file), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CorruptBundleError(f"cannot load {path / backbone_file}: {exc}") from exc
        if device == "cuda" and CUDA_EP not in session.get_providers():
            raise DeviceUnavailableError(
                "onnxruntime lists CUDA but could not start it (CUDA/cuDNN libraries missing?)"
            )
        return cls(path, manifest, head, session)

    @staticmethod
    def _read_head(path: Path, manifest: dict[str, Any]):
        spec = manifest["head"]
        kind_cls = head_class(spec.get("kind", "?"))
        head_path = path / spec["file"]
        if not head_path.is_file():
            raise MissingFileError(f"bundle file missing: {head_path}")
        try:
            with np.load(head_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise CorruptBundleError(f"cannot read head file {path / spec['file']}: {exc}") from exc
        return kind_cls.from_arrays(arrays, len(manifest["classes"]), int(manifest["backbone"]["embedding_dim"]))

    # -------------------------------------------------------------- properties
    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def device(self) -> str:
        """``cuda`` or ``cpu``: the provider onnxruntime actually runs the backbone on."""
        return "cuda" if self.session.get_providers()[0] == CUDA_EP else "cpu"

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.manifest["preprocess"]["input_size"])

    # --------------------------------------------------------------- inference
    def preprocess(self, images) -> np.ndarray:
        p = self.manifest["preprocess"]
        return preprocess(images, p["input_size"], p["mean"], p["std"])

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        """Images -> backbone embeddings ``(N, D)`` float32."""
        x = self.preprocess(images)
        outs = [
            self.session.run(None, {self._input_name: x[i : i + batch_size]})[0]
            for i in range(0, x.shape[0], batch_size)
        ]
        return np.concatenate(outs, axis=0)

    def scores(self, images) -> np.ndarray:
        return self.head.scores(self.embed(images))

    def predict(self, images, top_k: int = 1) -> Prediction:
        if top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
        s = self.scores(images)
        k = min(top_k, s.shape[1])
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        names = self.classes
        return Prediction(
            labels=[names[i] for i in order[:, 0]],
            scores=s[np.arange(s.shape[0]), order[:, 0]],
            indices=order[:, 0].copy(),
            top_k=[[(names[j], float(s[r, j])) for j in row] for r, row in enumerate(order)],
        )

    # ----------------------------------------------------- on-device learning
    def add_class(self, name: str, images) -> AddClassResult:
        """Learn class ``name`` from a few example images and persist it atomically.

        An existing ``name`` is extended (running mean of its prototype), not
        duplicated. On any error the bundle on disk and in memory is unchanged.
        """
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError("class name must be a non-empty string")
        if name != name.strip() or any(c in name for c in "\n\r\t"):
            raise InvalidInputError(f"class name {name!r} has surrounding or control whitespace")
        t0 = time.perf_counter()
        emb = self.embed(images)
        with storage.locked(self.path):
            # Another process may have updated the bundle since we loaded it.
            manifest = read_manifest(self.path)
            verify_files(self.path, manifest, [manifest["head"]["file"]])
            head = self._read_head(self.path, manifest)
            classes = list(manifest["classes"])
            index = classes.index(name) if name in classes else None
            new_head = head.with_examples(index, emb)
            if index is None:
                classes.append(name)
            new_manifest = self._commit(manifest, new_head, classes, name, emb.shape[0])
        self.manifest, self.head = new_manifest, new_head
        idx = classes.index(name)
        return AddClassResult(
            name=name,
            created=index is None,
            examples_added=int(emb.shape[0]),
            total_examples=int(new_head.counts[idx]),
            num_classes=len(classes),
            seconds=time.perf_counter() - t0,
        )

    def _commit(self, manifest, head, classes, name, n_examples) -> dict[str, Any]:
        old_file = manifest["head"]["file"]
        generation = int(manifest["head"].get("generation", 0)) + 1
        new_file = f"head-{generation:06d}.npz"
        head_path = self.path / new_file
        storage.atomic_write_bytes(head_path, storage.npz_bytes(head.arrays()))
        storage.crash_point("after-head")
        new_manifest = dict(manifest)
        new_manifest["classes"] = classes
        new_manifest["head"] = {**manifest["head"], "file": new_file, "generation": generation}
        files = {k: v for k, v in manifest["files"].items() if k != old_file}
        files[new_file] = file_entry(head_path)
        new_manifest["files"] = files
        new_manifest["history"] = list(manifest.get("history", [])) + [
            {
                "event": "add_class",
                "class": name,
                "examples": int(n_examples),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ]
        storage.atomic_write_bytes(self.path / MANIFEST_NAME, storage.json_bytes(new_manifest))
        storage.crash_point("after-manifest")
        storage.remove_stale(self.path, keep={new_file})
        return new_manifest

    # ------------------------------------------------------------------- info
    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "edgecl_version": m["edgecl_version"],
            "format_version": m["format_version"],
            "backbone": m["backbone"]["name"],
            "embedding_dim": m["backbone"]["embedding_dim"],
            "input_size": m["preprocess"]["input_size"],
            "learner": m.get("learner", {}).get("name"),
            "head": m["head"]["kind"],
            "num_classes": len(m["classes"]),
            "device": self.device,
            "providers": self.providers,
            "opset": m["backbone"].get("opset"),
            "added_on_device": [h["class"] for h in m.get("history", []) if h.get("event") == "add_class"],
        }
