"""PROOF: per-task projections (older frozen), the fusion module, the three-term score, export and device classes."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_helpers import tiny_clip
from edgecl.data import BatchLoader, load_dataset, make_shapes
from edgecl.errors import ConfigError
from edgecl.experiment import evaluate
from edgecl.learners import create_learner
from edgecl.protocol import ClassIncremental
from edgecl_export.bundle import export_learner
from edgecl_runtime import Bundle
from edgecl_runtime.heads.proof import ProofFusionHead
from edgecl_runtime.preprocess import preprocess


@dataclass
class Run:
    learner: object
    test: object
    class_names: list
    accuracy: list
    first_task: dict  # the image projection and context prompts after task 1


@pytest.fixture(scope="module")
def run():
    """PROOF on shapes:10, B5-Inc5 (2 tasks) over a small CLIP."""
    torch.manual_seed(0)
    train, test = load_dataset("shapes:10", image_size=(32, 32), seed=0, train_per_class=30, test_per_class=10)
    scenario = ClassIncremental(10, 5, 5, seed=1993)
    train, test = scenario.remap(train), scenario.remap(test)
    backbone = tiny_clip()
    learner, spec, acc, first = create_learner("proof", backbone, epochs=5), backbone.spec, [], {}
    for t in range(scenario.num_tasks):
        learner.fit_task(BatchLoader(scenario.task_data(train, t), spec.input_size, spec.mean, spec.std, 64, shuffle=True, seed=t))
        seen = scenario.seen_data(test, t)
        acc.append(100.0 * float(np.mean(evaluate(learner, seen, spec) == seen.labels)))
        if t == 0:
            first = {k: v.detach().clone() for k, v in learner.fusion.img.mlps[0].state_dict().items()}
            first["context"] = learner.fusion.context[0].detach().clone()
    return Run(learner, test, list(train.class_names), acc, first)


def _x(learner, images):
    spec = learner.backbone.spec
    return torch.from_numpy(preprocess(images, spec.input_size, spec.mean, spec.std))


def test_proof_learns_above_chance_with_one_projection_per_task(run):
    learner = run.learner
    assert run.accuracy[-1] > 2 * 100 / 10
    assert learner.tasks == 2 and len(learner.fusion.context) == 2 and learner.fusion.context[0].shape == (3, 192)
    frozen = [*learner.fusion.img.mlps[0].parameters(), *learner.fusion.txt.mlps[0].parameters(), learner.fusion.context[0]]
    assert all(not p.requires_grad for p in frozen)  # the newest task's projections and the fusion module train
    assert all(p.requires_grad for p in [*learner.fusion.img.mlps[1].parameters(), *learner.fusion.q.parameters()])
    # the first task's image projection and prompts were frozen while the second task trained
    for k, v in learner.fusion.img.mlps[0].state_dict().items():
        assert torch.equal(v, run.first_task[k])
    assert torch.equal(learner.fusion.context[0], run.first_task["context"])
    assert not torch.equal(learner.fusion.img.mlps[1][0].weight, learner.fusion.img.mlps[0][0].weight)


def test_prototypes_are_class_means_and_texts_are_name_embeddings(run):
    learner = run.learner
    head = learner.head
    names = run.class_names
    from edgecl.learners.vlm import class_text, text_features

    want = text_features(learner.backbone, [class_text(n) for n in names]).numpy()
    np.testing.assert_allclose(head.arrays()["texts"], want, atol=1e-6)
    assert np.all(head.arrays()["text_from_image"] == 0) and np.all(head.counts == 30)


def test_the_score_is_the_sum_of_its_three_terms(run):
    """image<->text + fused image<->text + fused image<->prototype, computed here from the module's weights."""
    learner, fusion = run.learner, run.learner.fusion
    x = _x(learner, run.test.images[:6])
    with torch.no_grad():
        f = learner.embedding_module()(x)
        protos, texts = torch.from_numpy(np.array(learner.head.prototypes)), torch.from_numpy(learner.head.effective_texts())

        def proj(mlps, v):
            return sum(m[2](torch.relu(m[0](v))) for m in mlps)

        fi, ti = F.normalize(proj(fusion.img.mlps, f), dim=1), F.normalize(proj(fusion.txt.mlps, texts), dim=1)
        pi = F.normalize(proj(fusion.img.mlps, protos), dim=1)
        plain = fi @ ti.T
        fused, proto = torch.zeros(6, 10), torch.zeros(6, 10)
        ctx = torch.cat(list(fusion.context))
        for n in range(6):
            seq = torch.cat([fi[n : n + 1], ti, pi, ctx])
            att = torch.softmax((seq @ fusion.q.weight.T) @ (seq @ fusion.k.weight.T).T / 192**0.5, dim=1)
            out = F.layer_norm((att @ (seq @ fusion.v.weight.T)) @ fusion.o.weight.T + fusion.o.bias + seq, (192,),
                               fusion.ln.weight, fusion.ln.bias)
            fused[n], proto[n] = out[1:11] @ out[0], out[11:21] @ out[0]
    torch.testing.assert_close(learner.logits(x), plain + fused + proto, atol=1e-4, rtol=1e-4)
    terms = learner.head.terms(f.numpy())  # the runtime head's own terms
    for got, want in zip(terms, (plain, fused, proto)):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert float((fused - fused.mean()).abs().mean()) > 0 and float((proto - proto.mean()).abs().mean()) > 0


def _full_attention(fusion, x, shared):
    """Each image's sequence ``[x_n; shared]`` through the fusion module, one image at a time (the definition)."""
    out = []
    for n in range(len(x)):
        seq = torch.cat([x[n : n + 1], shared])
        att = torch.softmax(fusion.q(seq) @ fusion.k(seq).T / seq.shape[1] ** 0.5, dim=1)
        out.append(fusion.ln(fusion.o(att @ fusion.v(seq)) + seq))
    return torch.stack(out)


def test_the_shared_token_shortcut_is_the_fusion_module_exactly():
    """Torch's ``fuse`` (attention of the shared tokens computed once) and the runtime head's ``fused_scores``
    (also the layer norm expanded) equal full attention per image in float64, with attention logits large enough
    to saturate a softmax."""
    from edgecl.learners.proof import ProofFusion
    from edgecl_runtime.heads.proof import fused_scores, share

    g = torch.Generator().manual_seed(3)
    fusion = ProofFusion(16, 8).double()
    fusion.extend(3, g)
    with torch.no_grad():
        for lin in (fusion.q, fusion.k):
            lin.weight.mul_(8.0)  # logits of a few hundred: the image token can take all or none of a row's weight
        for param in (fusion.o.bias, fusion.ln.weight, fusion.ln.bias):  # not the initial zeros and ones
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64))
    x, shared = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(23, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = _full_attention(fusion, x, shared)
        a_img, tokens = fusion.fuse(x, shared, 20)
    layers = {"attn_q": fusion.q.weight.T, "attn_k": fusion.k.weight.T, "attn_v": fusion.v.weight.T,
              "attn_o_w": fusion.o.weight.T, "attn_o_b": fusion.o.bias, "ln_g": fusion.ln.weight, "ln_b": fusion.ln.bias}
    weights = {k: v.detach().numpy() for k, v in layers.items()}  # float64, unlike ``arrays()``
    torch.testing.assert_close(a_img, want[:, 0], rtol=0, atol=1e-10)
    torch.testing.assert_close(tokens, want[:, 1:21], rtol=0, atol=1e-10)
    np.testing.assert_allclose(fused_scores(weights, x.numpy(), share(weights, shared.numpy(), 20)),
                               torch.einsum("nd,ncd->nc", want[:, 0], want[:, 1:21]).numpy(), rtol=0, atol=1e-10)


def test_an_image_scores_the_same_alone_and_in_a_batch(run):
    """Unlike the reference code (fused features averaged over the test batch), scores do not depend on the batch."""
    learner = run.learner
    with torch.no_grad():
        f = learner.embedding_module()(_x(learner, run.test.images[:40])).numpy()
    together = learner.head.scores(f)  # more than one chunk of the numpy head
    alone = np.vstack([learner.head.scores(f[i : i + 1]) for i in range(len(f))])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_state_round_trip_restores_the_scores(run):
    learner = run.learner
    again = create_learner("proof", learner.backbone, epochs=5)
    again.load_state(learner.state())
    x = _x(learner, run.test.images[:8])
    torch.testing.assert_close(again.logits(x), learner.logits(x))
    assert again.tasks == 2 and len(again.fusion.context) == 2
    again.fusion.extend(3, torch.Generator().manual_seed(0))  # a next task after loading: the fusion module trains again
    assert again.fusion.q.weight.requires_grad and again.fusion.context[-1].requires_grad
    assert not any(p.requires_grad for p in [*again.fusion.img.mlps[1].parameters(), again.fusion.context[1]])


def test_proof_refuses_a_backbone_without_a_text_tower():
    from peft_helpers import small_vit

    with pytest.raises(ConfigError, match="needs a CLIP backbone"):
        create_learner("proof", small_vit())


def test_export_parity_and_a_class_added_on_the_device_from_images(run, tmp_path):
    learner = run.learner
    report = export_learner(learner, run.class_names, tmp_path / "bundle")
    assert report.parity_max_abs_diff <= 1e-4
    bundle = Bundle.load(report.path)
    assert bundle.manifest["head"]["kind"] == "proof_fusion"
    assert bundle.manifest["text"]["unit_prototype"] is True  # the features are unit image embeddings
    spec = learner.backbone.spec
    names = np.array(run.class_names)[run.test.labels]
    torch_pred = np.array(run.class_names)[evaluate(learner, run.test, spec)]
    assert np.mean(np.array(bundle.predict(run.test.images).labels) == torch_pred) >= 0.99
    np.testing.assert_allclose(bundle.scores(run.test.images[:16]), learner.logits(_x(learner, run.test.images[:16])),
                               atol=1e-4)
    # a class from images alone: its prototype is their mean feature, its text feature that prototype (unit)
    extra, _ = make_shapes(100, 5, 1, seed=11)
    new = next(n for n in extra.class_names if n not in run.class_names)
    examples = extra.images[np.array(extra.class_names)[extra.labels] == new]
    bundle.add_class(new, examples)
    head = Bundle.load(report.path).head
    assert isinstance(head, ProofFusionHead) and head.num_classes == 11
    with torch.no_grad():
        feats = learner.embedding_module()(_x(learner, examples)).numpy()
    np.testing.assert_allclose(head.prototypes[-1], feats.mean(0), atol=1e-5)
    assert head.arrays()["text_from_image"][-1] == 1
    np.testing.assert_allclose(head.effective_texts()[-1], feats.mean(0) / np.linalg.norm(feats.mean(0)), atol=1e-5)
    reloaded = Bundle.load(report.path)
    np.testing.assert_allclose(reloaded.scores(examples), head.scores(reloaded.embed(examples)), atol=1e-4)
    own = reloaded.scores(examples)[:, -1].mean()
    assert own > reloaded.scores(run.test.images)[:, -1].mean()
    assert np.mean(np.array(reloaded.predict(run.test.images).labels) == names) > 0.2  # old classes still recognised


def test_a_class_added_by_name_alone(run, tmp_path):
    """By name: the name's unit text prototype is the class's one example, so its visual prototype and its text
    feature are both that vector; the single-file model scores it like the head, and removing it is exact."""
    learner = run.learner
    path = export_learner(learner, run.class_names, tmp_path / "bundle").path
    bundle = Bundle.load(path)
    before = bundle.scores(run.test.images[:8])
    clip = learner.backbone.clip
    with torch.no_grad():
        emb = clip.encode_text(clip.tokenize(["BLACK STAR"]))
        want = F.normalize(clip.prototypes_from_text(emb), dim=-1).numpy()[0]
    result = bundle.add_class("black star", text=True)
    assert result.created and result.examples_added == 1
    head = Bundle.load(path).head
    np.testing.assert_allclose(head.prototypes[-1], want, atol=1e-5)
    assert head.counts[-1] == 1 and head.arrays()["text_from_image"][-1] == 1
    np.testing.assert_allclose(head.effective_texts()[-1], want, atol=1e-5)
    np.testing.assert_allclose(bundle.scores(run.test.images[:8]), head.scores(bundle.embed(run.test.images[:8])),
                               atol=1e-4)
    bundle.remove_class("black star")
    np.testing.assert_array_equal(Bundle.load(path).scores(run.test.images[:8]), before)


def test_proof_run_directory_exports_with_its_clip(tmp_path):
    """A saved PROOF run loads back with the whole CLIP (its image tower from the run, the text side from the zoo)
    and exports from the run directory, as `edgecl export RUN BUNDLE` does."""
    from edgecl.experiment import RunConfig, run_experiment
    from edgecl.workflows import export_run
    from edgecl.rundir import load_run
    from edgecl.zoo import backbone_from_run

    cfg = RunConfig(dataset="shapes:10", backbone="edgecl-clip-tiny", learner="proof", init_cls=5, increment=5,
                    train_per_class=8, test_per_class=4, engine="torch", learner_args={"epochs": 1})
    run_experiment(cfg, out_dir=tmp_path / "run", log=lambda s: None)
    _, learner = load_run(tmp_path / "run", rebuild=backbone_from_run)
    assert learner.backbone.clip is not None
    report = export_run(tmp_path / "run", tmp_path / "bundle")
    assert report.parity_max_abs_diff is not None and report.parity_max_abs_diff <= 1e-4
