"""FLOP counting on real modules: exact MACs for small layers, attention paths, a real timm ResNet-50."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multisource.measure import flops as flops_mod
from multisource.measure.flops import CONVENTION, FlopsLedger, count_forward, forward_macs


class Tokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C) tokens -> Linear(C, out)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels, by SDPA or by plain matmuls (same work)."""

    def __init__(self, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2).reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2).contiguous()
        if self.fused:
            return F.scaled_dot_product_attention(q, q, q)
        attn = (q @ q.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        return attn @ q


class Encoder(nn.Module):
    """Patch embedding + nn.TransformerEncoderLayer + nn.MultiheadAttention (fused fast paths in eval)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.layer = nn.TransformerEncoderLayer(dim, 4, 64, batch_first=True)
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.layer(self.patch(x).flatten(2).transpose(1, 2))
        return self.mha(t, t, t, need_weights=False)[0]


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def test_depthwise_grouped_and_dense_conv_exact():
    depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    assert count_forward(depthwise, 16, in_chans=32)["macs_per_image"] == 32 * 16 * 16 * 9
    grouped = nn.Conv2d(32, 64, 3, padding=1, groups=4)
    assert count_forward(grouped, 16, in_chans=32)["macs_per_image"] == 64 * 16 * 16 * (32 // 4) * 9
    dense = nn.Conv2d(3, 16, 3, padding=1)
    assert forward_macs(dense, 16) == 16 * 16 * 16 * 3 * 9
    strided = nn.Conv2d(3, 8, 5, stride=2, padding=2)  # 16 -> 8 output pixels per side
    assert forward_macs(strided, (16, 12)) == 8 * 8 * 6 * 3 * 25


def test_linear_over_tokens_and_batch_size_normalised():
    t, d, out = 8 * 8, 24, 40
    model = Tokens(d, out)
    assert count_forward(model, 8, in_chans=d)["macs_per_image"] == t * d * out
    assert count_forward(model, 8, in_chans=d, batch_size=4)["macs_per_image"] == t * d * out


@pytest.mark.parametrize("fused", [True, False])
def test_attention_counted_by_sdpa_and_by_matmul(fused):
    heads, c, side = 4, 32, 8
    t, dh = side * side, c // heads
    result = count_forward(Attention(heads, fused), side, in_chans=c)
    assert result["macs_per_image"] == 2 * heads * t * t * dh  # QK^T and AV
    assert result["uncounted_ops"] == []
    if fused:  # on CPU this is the flash kernel torch's counter has no formula for
        assert any("attention" in op for op in result["by_op_macs_per_image"])


def test_missing_formula_is_reported(monkeypatch, caplog):
    """Without our extra formulas CPU SDPA counts 0; the guard must say so instead of staying silent."""
    from torch.utils.flop_counter import flop_registry

    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is None or cpu_sdpa in flop_registry:
        pytest.skip("this torch build counts CPU attention itself")
    monkeypatch.setattr(flops_mod, "_extra_formulas", lambda: {})
    with caplog.at_level(logging.WARNING, logger=flops_mod.__name__):
        result = count_forward(Attention(4, fused=True), 8, in_chans=32)
    assert result["macs_per_image"] == 0
    assert result["uncounted_ops"] == ["aten._scaled_dot_product_flash_attention_for_cpu"]
    assert "no formula" in caplog.text


def test_fused_transformer_fast_paths_counted_and_train_flags_restored():
    model = Encoder(32)
    model.train()
    model.mha.eval()  # a mixed state must come back exactly as it was
    t, d = 16, 32  # 32x32 image, 8x8 patches
    attn = t * d * 3 * d + 2 * t * t * d + t * d * d  # qkv, QK^T + AV, out projection
    expected = t * d * 3 * 64 + attn + t * d * 64 * 2 + attn
    result = count_forward(model, 32)
    assert result["macs_per_image"] == expected
    assert result["uncounted_ops"] == []
    assert model.training and model.layer.training and not model.mha.training
    assert torch.backends.mha.get_fastpath_enabled()


def test_ensemble_counts_every_member():
    members = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
               for _ in range(3)]
    one = 8 * 16 * 16 * 3 * 9 + 8 * 5
    assert forward_macs(members[0], 16) == one
    assert forward_macs(Ensemble(members), 16) == 3 * one


def test_timm_resnet50_and_vit_attention_paths():
    timm = pytest.importorskip("timm")
    resnet = timm.create_model("resnet50", pretrained=False)
    macs = forward_macs(resnet, 224)
    assert abs(macs - 4.1e9) / 4.1e9 < 0.03, macs
    with torch.device("meta"):  # same modules without weights: same count, no compute
        assert forward_macs(timm.create_model("resnet50", pretrained=False), 224) == macs
    vit = timm.create_model("test_vit", pretrained=False, img_size=32)
    fused = count_forward(vit, 32)
    timm.layers.set_fused_attn(False)
    try:
        plain_vit = timm.create_model("test_vit", pretrained=False, img_size=32)
        plain = count_forward(plain_vit, 32)
    finally:
        timm.layers.set_fused_attn(True)
    attention_ops = [k for k in fused["by_op_macs_per_image"] if "attention" in k or "bmm" in k]
    assert attention_ops and fused["by_op_macs_per_image"][attention_ops[0]] > 0
    assert fused["macs_per_image"] == plain["macs_per_image"] > 0
    assert fused["uncounted_ops"] == plain["uncounted_ops"] == []


def test_ledger_phases_training_and_dict():
    ledger = FlopsLedger()
    ledger.add_training("finetune", 1000, 50)
    ledger.add_training("finetune", 1000, 10)  # a second fine-tune adds up
    ledger.add_forward("eval", 1000, 20)
    ledger.add("merge", 12345)
    out = ledger.to_dict(forward_per_image=1000)
    assert out["by_phase"] == {"finetune": 3 * 1000 * 60, "eval": 20_000, "merge": 12345}
    assert out["total"] == 180_000 + 20_000 + 12345 == ledger.total
    assert out["total_gmacs"] == pytest.approx(out["total"] / 1e9)
    assert out["forward_per_image"] == 1000 and out["forward_per_image_gmacs"] == pytest.approx(1e-6)
    assert out["unit"] == "MACs" and out["convention"] == CONVENTION and "2 x MACs" in CONVENTION
    assert FlopsLedger().to_dict()["forward_per_image"] is None
    with pytest.raises(ValueError, match="images=-1"):
        ledger.add_forward("eval", 10, -1)
