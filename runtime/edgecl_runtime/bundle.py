"""Load an edgecl bundle, predict, and add classes on the device."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import blas, inputs, signing, store, text
from .errors import (
    DeviceUnavailableError,
    IncompatibleBundleError,
    InvalidInputError,
    MissingFileError,
)
from .manifest import onnx_file, single_file
from .preprocess import load_images, preprocess
from .session import CUDA_EP, Runner, create_session, select_providers, use_io_binding
from .unknown import unknown_scores


@dataclass
class Prediction:
    """Top-k classes per image: ``labels[i]`` / ``scores[i]`` are the best ones.

    ``unknown_scores[i]``: how unlike every known class image ``i`` is (higher: more likely unknown;
    ``edgecl_runtime.unknown``); with a threshold (``predict(unknown=...)``) a rejected image's label is ``None``
    (``indices[i]`` and ``top_k[i]`` still name the nearest classes)."""

    labels: list[str | None]
    scores: np.ndarray  # (N,) score of the top class
    indices: np.ndarray  # (N,) class index of the top class
    top_k: list[list[tuple[str, float]]] = field(default_factory=list)
    seq: int = 0  # the bundle state the prediction came from: its last journaled update (see ``history``)
    unknown_scores: np.ndarray | None = None  # (N,) float64
    threshold: float | None = None  # the unknown threshold applied (None: no rejection)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> "Prediction":
        """The prediction of image ``i`` alone (a one-image ``Prediction``)."""
        row = slice(i, i + 1 or None)  # i = -1 -> slice(-1, None)
        u = None if self.unknown_scores is None else self.unknown_scores[row]
        return Prediction(self.labels[row], self.scores[row], self.indices[row], self.top_k[row], self.seq, u,
                          self.threshold)

    @property
    def unknown(self) -> np.ndarray:
        """``(N,)`` bool: image ``i`` was rejected as unknown (its label is ``None``)."""
        return np.array([label is None for label in self.labels], bool)


@dataclass
class AddClassResult:
    name: str
    created: bool  # False: examples extended an existing class
    examples_added: int
    total_examples: int
    num_classes: int
    seconds: float
    embed_seconds: float = 0.0  # preprocessing + one backbone pass over the examples
    update_seconds: float = 0.0  # the rest: head update and atomic persist


@dataclass(frozen=True)
class View:
    """One consistent state of a bundle: what ``predict`` scores with and names from."""

    manifest: dict[str, Any]
    head: Any  # an edgecl_runtime.heads.Head
    seq: int  # last journaled update in ``head``
    classes: tuple[str, ...]


class Bundle:
    """An exported model on the device: ONNX model + head state + manifest.

    Threads: a ``Bundle`` may be shared by threads. Each call reads the
    current state once (``View``: manifest, head, classes), so scores and the
    class names they are labelled with always come from the same state;
    updates build a new state and swap it in with one assignment. Processes:
    writers serialise on the bundle's lock and every update is journaled;
    ``refresh()`` picks up other processes' updates (docs/bundle-format.md).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], head, session,
                 session_source: str = "direct", blas_threads: int | None = 1):
        self.path = path
        self._view = View(manifest, head, manifest.get("journal", {}).get("seq", 0), tuple(manifest["classes"]))
        self.session = session
        self.session_source = session_source  # cached | built | direct (see runtime.session)
        self._run = Runner(session, io_binding=use_io_binding(session.get_providers()))
        self.blas_threads = blas_threads  # numpy's BLAS threads during the runtime's numpy work (runtime.blas)
        self.policy = None  # the signing.Policy of load (trusted keys, signing key); None: the environment's
        self._text = None  # the text tower's session (text.TextTower), opened on first use

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", verify: bool = True, threads: int | None = None,
        optimize: str = "all", cache: bool = True, trust_modified: bool = False, blas_threads: int | None = 1,
        public_key=None, signing_key=None,
    ) -> "Bundle":
        """Open a bundle; ``device`` is ``auto`` (CUDA when onnxruntime has it), ``cpu`` or ``cuda``.

        Every file is checked against the manifest's sha256 unless ``verify=False``.
        ``threads``: intra-op threads of onnxruntime (None: one per physical core).
        ``optimize``: graph optimisation level (``all`` | ``extended`` | ``basic`` | ``disable``);
        the optimised graph is cached under ``.ort-cache/`` unless ``cache=False``
        (see ``edgecl_runtime.session``).
        ``trust_modified``: accept files whose checksum differs from the manifest
        (warning + a ``trust_log`` record in the manifest) instead of refusing them.
        ``blas_threads``: numpy's BLAS threads while the bundle preprocesses,
        scores and updates its head (default 1, so that idle BLAS workers do not
        spin on the cores onnxruntime needs; see ``edgecl_runtime.blas``; None: leave
        numpy's setting alone).
        ``public_key``: Ed25519 public key(s) (PEM path, PEM, key object, or a list) this device trusts:
        an unsigned bundle or update, or one signed by another key, is refused (``SignatureError``);
        ``signing_key``: the private key the device signs its own updates with (both default to the
        env variables ``EDGECL_PUBLIC_KEY`` / ``EDGECL_SIGNING_KEY``; see ``edgecl_runtime.signing``).
        """
        if blas_threads is not None and (not isinstance(blas_threads, int) or blas_threads < 1):
            raise InvalidInputError(f"blas_threads must be a positive integer or None, got {blas_threads!r}")
        path = Path(path)
        providers = select_providers(device)
        policy = None if public_key is None and signing_key is None else signing.make_policy(public_key, signing_key)
        with signing.using(policy):
            state = store.read_state(path, verify=verify, trust_modified=trust_modified)
        manifest, head = state.manifest, state.head
        model_file = onnx_file(manifest)
        if not (path / model_file).is_file():
            raise MissingFileError(f"bundle file missing: {path / model_file}")
        digest = manifest["files"].get(model_file, {}).get("sha256", "unverified")
        session, source = create_session(path / model_file, digest, providers, threads, optimize, cache)
        if device == "cuda" and CUDA_EP not in session.get_providers():
            raise DeviceUnavailableError(
                "onnxruntime lists CUDA but could not start it (CUDA/cuDNN libraries missing?)"
            )
        bundle = cls(path, manifest, head, session, source, blas_threads)
        bundle._set_state(state)
        bundle.policy = policy
        return bundle

    # -------------------------------------------------------------- properties
    @property
    def manifest(self) -> dict[str, Any]:
        return self._view.manifest

    @property
    def head(self):
        return self._view.head

    @property
    def seq(self) -> int:
        return self._view.seq

    @property
    def classes(self) -> list[str]:
        return list(self._view.classes)

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
        inputs.image_budget(images)  # the pixel budget (edgecl_runtime.limits), from the shapes alone
        p = self.manifest["preprocess"]
        return preprocess(images, p["input_size"], p["mean"], p["std"])

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        """Images -> features ``(N, D)`` float32: what ``add_class`` learns from and the journal stores
        (the backbone's embeddings after the head's fixed transform, if any)."""
        with blas.limit(self.blas_threads):
            return self._batched(self.preprocess(images), batch_size, self._view, "features")

    def _batched(self, x: np.ndarray, batch_size: int, view: View, output: str | tuple[str, ...]):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        run = lambda xb: self._forward(xb, view, output)  # noqa: E731
        if x.shape[0] <= batch_size:
            return run(x)
        parts = [run(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(parts) if isinstance(output, str) else tuple(map(np.concatenate, zip(*parts)))

    def _forward(self, x: np.ndarray, view: View, output: str | tuple[str, ...]):
        """``features`` or ``scores`` of a preprocessed batch under ``view``'s head (a tuple of names: a tuple of
        arrays, from one model run)."""
        names = (output,) if isinstance(output, str) else tuple(output)
        if single_file(view.manifest):  # the graph scores: the head's state enters as inputs
            outs = self._run.run_outputs(x, view.head.graph_inputs(), names)
        else:
            feats = self._run(x)
            outs = [feats if name == "features" else view.head.scores(feats) for name in names]
        return outs[0] if isinstance(output, str) else tuple(outs)

    def scores(self, images, batch_size: int = 64) -> np.ndarray:
        """``(N, C)`` class scores (higher is better) in the order of ``classes``."""
        return self._scores(images, self._view, batch_size)

    def _scores(self, images, view: View, batch_size: int = 64) -> np.ndarray:
        with blas.limit(self.blas_threads):  # one limit around the whole path
            return self._batched(self.preprocess(images), batch_size, view, "scores")

    def _scores_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """Scores of an already preprocessed batch in one model run (for side-by-side timing)."""
        with blas.limit(self.blas_threads):
            return self._forward(x, self._view, "scores")

    def _features_and_scores(self, images, view: View, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``(features, scores)`` of ``images`` under ``view``'s head, from one model run per batch."""
        with blas.limit(self.blas_threads):
            return self._batched(self.preprocess(images), batch_size, view, ("features", "scores"))

    def unknown_threshold(self, unknown: str | float | None) -> float | None:
        """The threshold ``predict(unknown=...)`` applies: ``"auto"`` the bundle's calibrated one (set at export,
        ``manifest["unknown"]``), a number itself, ``None`` none."""
        if unknown is None:
            return None
        if isinstance(unknown, str):
            if unknown != "auto":
                raise InvalidInputError(f"unknown must be 'auto', a number or None, got {unknown!r}")
            record = self.manifest.get("unknown")
            if not record or record.get("threshold") is None:
                raise IncompatibleBundleError(
                    "this bundle has no calibrated unknown threshold (exported before edgecl 0.2 or without "
                    "training data): re-export it, or pass a threshold number")
            return float(record["threshold"])
        if isinstance(unknown, bool) or not isinstance(unknown, (int, float)) or not np.isfinite(unknown):
            raise InvalidInputError(f"unknown threshold must be a finite number, got {unknown!r}")
        return float(unknown)

    def unknown_score_name(self, view: View | None = None) -> str:
        """The unknown score the bundle reports: its calibrated one, else its head kind's default."""
        view = view or self._view
        return (view.manifest.get("unknown") or {}).get("score") or view.head.UNKNOWN_SCORE

    def predict(self, images, top_k: int = 1, unknown: str | float | None = None) -> Prediction:
        """Top-``top_k`` classes of ``images``: uint8/float arrays (``edgecl_runtime.preprocess``),
        a PIL image or an image file path, or a list of any of these.

        Every prediction carries an ``unknown_score``. ``unknown="auto"`` rejects (label ``None``) the images whose
        score is above the bundle's calibrated threshold, a number above that threshold; ``None`` rejects none.
        """
        if top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
        threshold = self.unknown_threshold(unknown)
        view = self._view  # scores and names from one state, whatever other threads do meanwhile
        feats, s = self._features_and_scores(images, view)
        u = unknown_scores(view.head, self.unknown_score_name(view), feats, s,
                           (view.manifest.get("unknown") or {}).get("noise_ratio"))
        k = min(top_k, s.shape[1])
        if k == 1:  # argmax is O(C); a full sort is O(C log C) per image
            order = np.argmax(s, axis=1)[:, None]
        else:
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        names = view.classes
        rejected = np.zeros(len(u), bool) if threshold is None else u > threshold
        return Prediction(
            labels=[None if rejected[r] else names[i] for r, i in enumerate(order[:, 0])],
            scores=s[np.arange(s.shape[0]), order[:, 0]],
            indices=order[:, 0].copy(),
            top_k=[[(names[j], float(s[r, j])) for j in row] for r, row in enumerate(order)],
            seq=view.seq,
            unknown_scores=u,
            threshold=threshold,
        )

    def predict_stream(self, frames, batch_size: int = 8, top_k: int = 1, unknown: str | float | None = None):
        """Predict a stream of frames (any iterable, e.g. a camera): yields one ``Prediction`` per frame.

        Frames are grouped into batches of up to ``batch_size`` (batching raises
        throughput; ``batch_size=1`` gives the lowest latency per frame). Results
        are those of ``predict`` on the same frames, in order.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch: list = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == batch_size:
                yield from self._predict_frames(batch, top_k, unknown)
                batch = []
        if batch:
            yield from self._predict_frames(batch, top_k, unknown)

    def _predict_frames(self, frames: list, top_k: int, unknown: str | float | None = None):
        same = all(isinstance(f, np.ndarray) and f.shape == frames[0].shape and f.dtype == frames[0].dtype for f in frames)
        pred = self.predict(np.stack(frames) if same and frames[0].ndim == 3 else frames, top_k=top_k, unknown=unknown)
        for i in range(len(pred)):
            yield pred[i]

    # ----------------------------------------------------- on-device learning
    def add_class(self, name: str, images=None, timeout: float | None = None, text: bool | str | None = None
                  ) -> AddClassResult:
        """Learn class ``name`` from a few example images and/or from text, and persist it (journaled, crash-safe).

        ``text=True`` adds the prototype of the name itself, ``text="..."`` that of another description
        (a class added by name alone, zero-shot): the bundle's text tower (``text.onnx``, a bundle exported
        from a CLIP backbone with a prototype head; ``edgecl_runtime.text``) turns it into one example
        in the feature space, added with the images' embeddings in one journaled update. A bundle without
        a text tower refuses ``text`` (``IncompatibleBundleError``).

        An existing ``name`` is extended (exact running statistics), not
        duplicated. Names are validated (``edgecl_runtime.inputs.class_name``) and
        NFC-normalised. Another process's concurrent update is waited for (up to
        ``timeout`` s) and kept. On any error the bundle on disk and in memory is
        unchanged. See ``edgecl_runtime.store`` for the update protocol.
        """
        name = inputs.class_name(name)
        if images is None and not text:
            raise InvalidInputError("add_class needs images, text (text=True: the name itself), or both")
        t0 = time.perf_counter()
        parts = []
        if images is not None:
            images = load_images(images)  # PIL images / paths -> arrays, so the budget sees their sizes
            inputs.image_budget(images)
            parts.append(self.embed(images))
        if text:
            parts.append(self.text_prototypes([name if text is True else text]))
        emb = np.concatenate(parts) if len(parts) > 1 else parts[0]
        t_embed = time.perf_counter() - t0
        with blas.limit(self.blas_threads), signing.using(self.policy):
            state, created = store.add_examples(self.path, name, emb, timeout=timeout)
        self._set_state(state)
        idx, seconds = state.classes.index(name), time.perf_counter() - t0
        return AddClassResult(
            name=name,
            created=created,
            examples_added=int(emb.shape[0]),
            total_examples=int(state.head.counts[idx]),
            num_classes=len(state.classes),
            seconds=seconds,
            embed_seconds=t_embed,
            update_seconds=seconds - t_embed,
        )

    def text_prototypes(self, texts) -> np.ndarray:
        """Prototypes ``(N, D)`` of ``texts`` (strings) in the feature space, by the bundle's text tower
        (``IncompatibleBundleError`` without one, or for a head that takes no text prototype)."""
        section = text.text_section(self.manifest, str(self.path))
        if self.manifest["head"]["kind"] not in text.TEXT_HEADS:
            raise IncompatibleBundleError(f"head {self.manifest['head']['kind']!r} takes no text prototype; "
                                          f"only {', '.join(text.TEXT_HEADS)}")
        if self._text is None:
            if not (self.path / section["file"]).is_file():
                raise MissingFileError(f"bundle file missing: {self.path / section['file']}")
            self._text = text.TextTower(self.path / section["file"], section)
        with blas.limit(self.blas_threads):
            return self._text.run(texts)

    def remove_class(self, name: str, timeout: float | None = None) -> None:
        """Forget class ``name`` on the device; journaled like an addition.

        Exact inverse of the class's additions since the base (see ``edgecl_runtime.store.remove_class``):
        for a class added on the device every other score is as before it was added.
        """
        with signing.using(self.policy):
            self._set_state(store.remove_class(self.path, name, timeout=timeout))

    def merge(self, other, out_path: str | Path | None = None) -> "Bundle":
        """Merge the on-device updates of ``other`` (a ``Bundle`` or path, or a list of them: a fleet; same export)
        into this bundle, or into a new one at ``out_path``.

        The result equals one device having seen every device's examples; see
        ``edgecl_runtime.store.merge``. Returns the merged bundle (``self``, refreshed, when in place).
        """
        many = isinstance(other, (list, tuple))
        paths = [o.path if isinstance(o, Bundle) else Path(o) for o in (other if many else [other])]
        other_path = paths if many else paths[0]
        with signing.using(self.policy):
            state = store.merge(self.path, other_path, out_path)
        if out_path is None or Path(out_path).resolve() == self.path.resolve():
            self._set_state(state)
            return self
        with signing.using(self.policy):
            return type(self).load(out_path, device=self.device)

    def history(self) -> dict[str, Any]:
        """The bundle's base, journaled updates and events (``edgecl_runtime.store.history``)."""
        with signing.using(self.policy):
            return store.history(self.path)

    def rollback(self, to: int) -> None:
        """Restore the state after update ``to`` (see ``edgecl history``)."""
        with signing.using(self.policy):
            self._set_state(store.rollback(self.path, to))

    def compact(self) -> None:
        """Fold the journal into a new base (the current state)."""
        with signing.using(self.policy):
            self._set_state(store.compact(self.path))

    def refresh(self) -> bool:
        """Pick up updates other processes committed since this bundle was loaded; True if anything changed.

        Readers never see a mix: the new state is read completely, then swapped in.
        """
        with signing.using(self.policy):
            state = store.read_state(self.path, verify="state", full=False)
        changed = (state.manifest["journal"], state.seq, state.classes) != (
            self.manifest.get("journal"), self.seq, self.classes
        ) or state.manifest["head"]["file"] != self.manifest["head"]["file"]
        self._set_state(state)
        return changed

    def _set_state(self, state) -> None:
        self._view = View(state.manifest, state.head, state.seq, tuple(state.classes))

    # ------------------------------------------------------------------- info
    def _added_on_device(self) -> list[str]:
        """Classes the device learned: those not in the base (the export, or the last compaction)."""
        m = self.manifest
        legacy = [h["class"] for h in m.get("history", []) if h.get("event") == "add_class"]  # format 1
        base = set(m.get("base", {}).get("classes", m["classes"]))
        return list(dict.fromkeys(legacy + [c for c in self._view.classes if c not in base]))

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
            "model": onnx_file(m),
            "opset": m.get("model", m["backbone"]).get("opset"),
            "added_on_device": self._added_on_device(),
            "bundle_id": m.get("bundle_id"),
            "updates": self.seq,  # journaled on-device updates (see `edgecl history`)
            "signed_by": (m.get("signature") or {}).get("key_id"),
            "text_tower": (m.get("text") or {}).get("model"),  # classes can be added by name (docs/clip.md)  # verified only with public keys configured
        }
