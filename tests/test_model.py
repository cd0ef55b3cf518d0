import pytest
import torch

from segdemo.core.config import ModelConfig
from segdemo.core.encoders import build_model
from segdemo.core.model import PretrainedUnavailable, UNet


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("hw", [(64, 64), (37, 50), (17, 96)])
def test_any_input_size_gives_same_size_logits(bilinear, hw):
    model = UNet(num_classes=3, depth=3, width=4, bilinear=bilinear).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 3, *hw)


def test_depth_and_width_change_the_net():
    small = sum(p.numel() for p in UNet(2, depth=2, width=4).parameters())
    big = sum(p.numel() for p in UNet(2, depth=4, width=8).parameters())
    assert big > 10 * small


def test_forward_backward_64px():
    model = UNet(num_classes=4, depth=4, width=4)
    out = model(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_encoder_without_weights():
    model = build_model(ModelConfig(encoder="resnet18", width=4, num_classes=3)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 70)).shape == (1, 3, 45, 70)


def test_pretrained_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: weights must be downloaded
    import torch.hub

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(PretrainedUnavailable, match="could not load ImageNet weights.*without --pretrained"):
        build_model(ModelConfig(encoder="resnet18", pretrained=True, num_classes=2))
