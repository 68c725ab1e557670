"""edgecl.loop (the one training loop and cosine schedule) and the one label check of the learners."""

import math

import numpy as np
import pytest
import torch

from edgecl.errors import ConfigError, EdgeclError, LabelError
from edgecl.learners import create_learner
from edgecl.learners.labels import task_classes
from edgecl.loop import cosine_factor, cosine_schedule, epochs, mask_logits, train


def test_cosine_factor_warms_up_then_decays_to_zero():
    assert [cosine_factor(s, 10, warmup=2) for s in (0, 1)] == [0.5, 1.0]
    assert cosine_factor(2, 10, warmup=2) == 1.0
    assert cosine_factor(6, 10, warmup=2) == pytest.approx(0.5)
    assert cosine_factor(10, 10, warmup=2) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(99, 10) == pytest.approx(0.0, abs=1e-12)  # stays at 0 past the end
    assert cosine_factor(3, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 8)))


def test_train_steps_the_schedule_and_skips_batches_without_a_loss():
    w = torch.nn.Parameter(torch.tensor([4.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = cosine_schedule(opt, total=4)
    seen = []
    batches = epochs([1.0, None, 2.0], 2)
    train(batches, lambda b: None if b is None else (w * b).sum(), opt, sched, on_step=lambda loss: seen.append(loss.item()))
    assert len(seen) == 4  # two batches per epoch carry a loss
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to 0 after 4 steps
    # each step moves w by lr * factor(step) * b
    expected = 4.0 - 0.1 * sum(cosine_factor(s, 4) * b for s, b in enumerate([1.0, 2.0, 1.0, 2.0]))
    assert w.item() == pytest.approx(expected)


def test_mask_logits_hides_earlier_classes_from_cross_entropy():
    logits = torch.tensor([[5.0, 1.0, 2.0]])
    masked = mask_logits(logits, 1)
    assert masked[0, 0] == -math.inf and torch.equal(masked[0, 1:], logits[0, 1:])
    assert masked.argmax(1).item() == 2


def test_task_classes_is_the_one_label_check():
    assert task_classes(np.array([3, 4, 4, 1]), 3) == ([1], [3, 4])
    with pytest.raises(LabelError, match="no training samples"):
        task_classes(np.array([], dtype=np.int64), 0)
    with pytest.raises(LabelError, match=r"classes \[3\] have no training samples"):
        task_classes(torch.tensor([4, 5]), 3)
    with pytest.raises(LabelError, match="must be new classes >= 3"):
        task_classes(np.array([1, 3]), 3, new_only=True)
    assert issubclass(LabelError, ValueError) and issubclass(LabelError, EdgeclError)


def test_hyper_parameters_go_through_one_path_with_validate():
    from tests.peft_helpers import small_vit

    bb = small_vit()
    with pytest.raises(ConfigError, match="simplecil has no hyper-parameter"):
        create_learner("simplecil", bb, epochs=3)
    with pytest.raises(ConfigError, match="val_fraction must lie in"):  # a validate() hook
        create_learner("ranpac", bb, val_fraction=1.5)
    with pytest.raises(ConfigError, match="alpha and beta must be >= 0"):
        create_learner("ease", bb, alpha=-1.0)
    assert create_learner("l2p", bb, head="prototype").head_kind == "prototype_cosine"
    assert create_learner("l2p", bb).head_kind == "linear"
    assert create_learner("fecam", bb).head_kind == "gaussian"
