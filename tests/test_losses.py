import pytest
import torch

from segdemo.core.losses import SegLoss, class_weights_from_counts, soft_dice_loss
from segdemo.data.base import IGNORE


def test_ce_ignores_ignored_pixels():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    noisy = target.clone()
    noisy[0, 0] = IGNORE
    a = SegLoss("ce")(logits, noisy)
    b = torch.nn.functional.cross_entropy(logits[:, :, 1:], target[:, 1:])
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_dice_is_zero_for_perfect_and_near_one_for_wrong():
    target = torch.tensor([[[0, 1], [2, 2]]])
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-3)
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(wrong, target, eps=1e-6).item() == pytest.approx(1.0, abs=1e-3)


def test_weighted_ce_weights_rare_classes_more():
    w = class_weights_from_counts([900, 90, 10, 0])
    # median of present frequencies is 0.09: weights 0.1, 1, 9; the absent class gets the max
    assert w.tolist() == pytest.approx([0.1, 1.0, 9.0, 9.0], rel=1e-5)


def test_bce_for_one_channel_binary():
    logits = torch.full((1, 1, 2, 2), 10.0)
    target = torch.tensor([[[1, 1], [1, IGNORE]]])
    assert SegLoss("bce")(logits, target).item() < 1e-3
    assert SegLoss("bce")(-logits, target).item() > 5


@pytest.mark.parametrize("kind", ["ce", "weighted_ce", "dice", "ce_dice", "weighted_ce_dice"])
def test_every_loss_has_gradients(kind):
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    SegLoss(kind, torch.ones(4))(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
