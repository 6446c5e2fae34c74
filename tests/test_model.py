import pytest
import timm
import torch

from nas.arch import PRESETS, ArchSpec, StageSpec
from supernet import build_model
from supernet.blocks import Flat, Unflat
from supernet.complexity import count_macs, count_params
from tests.conftest import randomize_state

TIMM_PARAMS_M = {"l1": "12.29", "l3": "31.41", "l7": "82.23"}


@pytest.mark.parametrize("name", ["l1", "l3", "l7"])
def test_timm_oracle_same_keys_same_logits(name):
    """timm's EfficientFormer state_dict loads key for key, and both give the same logits."""
    ref = timm.create_model(f"efficientformer_{name}", pretrained=False).eval()
    randomize_state(ref, seed=1)
    ours = build_model(PRESETS[name]).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert a.abs().max() > 1e-2  # the comparison is not between two near-zero outputs
    assert (a - b).abs().max().item() <= 1e-5
    assert count_params(ours) == count_params(ref)
    assert f"{count_params(ours) / 1e6:.2f}" == TIMM_PARAMS_M[name]


def test_timm_oracle_distilled_training_returns_both_heads():
    ref = timm.create_model("efficientformer_l1", pretrained=False)
    ours = build_model(PRESETS["l1"])
    ours.load_state_dict(ref.state_dict())
    ref.set_distilled_training(True)
    ours.set_distilled_training(True)
    ref.train(), ours.train()
    x = torch.randn(2, 3, 224, 224)
    torch.manual_seed(0)
    a = ref(x)
    torch.manual_seed(0)
    b = ours(x)
    assert isinstance(b, tuple) and len(b) == 2
    for u, v in zip(a, b):
        assert torch.allclose(u, v, atol=1e-5)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_any_input_size_divisible_by_32(size):
    spec = PRESETS["l1"].replace(input_size=size, num_classes=7)
    model = build_model(spec).eval()
    grid = size // 32
    attn = model.stages[3].blocks[-1].token_mixer
    assert attn.attention_biases.shape == (8, grid * grid)  # the bias follows the real token grid
    assert attn.attention_bias().shape == (8, grid * grid, grid * grid)
    with torch.no_grad():
        y = model(torch.randn(2, 3, size, size))
    assert y.shape == (2, 7) and torch.isfinite(y).all()


def test_3d_in_stage3_reshapes_back_before_stage4(tiny_spec):
    model = build_model(tiny_spec)
    s3, s4 = model.stages[2].blocks, model.stages[3].blocks
    assert isinstance(s3[1], Flat) and isinstance(s3[-1], Unflat)
    assert isinstance(s4[0], Flat)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_network_ending_in_4d_and_empty_stages():
    spec = ArchSpec(
        stages=(StageSpec(16, ()), StageSpec(32, ("4d",)), StageSpec(48, ()), StageSpec(64, ("4d",))),
        input_size=64,
        num_classes=5,
    ).validate()
    model = build_model(spec).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def _fused_matches(spec: ArchSpec, seed: int):
    model = build_model(spec).eval()
    randomize_state(model, seed)
    x = torch.randn(2, spec.in_chans, spec.input_size, spec.input_size)
    with torch.no_grad():
        ref = model(x)
        n_before = len(list(model.modules()))
        model.fuse()
        out = model(x)
    assert len(list(model.modules())) < n_before
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    rel = (out - ref).abs().max() / ref.abs().max()
    assert rel.item() <= 1e-4, rel.item()


@pytest.mark.parametrize("name", ["l1", "l3"])
def test_fused_equals_unfused_presets(name):
    _fused_matches(PRESETS[name], seed=2)


def test_fused_equals_unfused_tiny(tiny_spec):
    _fused_matches(tiny_spec, seed=3)


def test_macs_hand_count_tiny():
    """MACs of a one-block net, summed by hand from the counting rule."""
    spec = ArchSpec(
        stages=(StageSpec(16, ()), StageSpec(16, ()), StageSpec(16, ()), StageSpec(16, ("3d",))),
        input_size=32,
        num_classes=10,
        attention={"key_dim": 4, "num_heads": 2, "attn_ratio": 2},
    ).validate()
    macs = count_macs(build_model(spec), 32)
    stem = 16 * 16 * 8 * 27 + 8 * 8 * 16 * 72  # conv1: 3->8 at 16x16; conv2: 8->16 at 8x8
    embeds = (4 * 4 + 2 * 2 + 1 * 1) * 16 * 16 * 9
    n, qkv_out, v_all = 1, 4 * 2 * 2 + 8 * 2, 8 * 2
    mb3d = n * 16 * qkv_out + 2 * n * n * (4 + 8) + n * v_all * 16 + n * 16 * 64 * 2
    head = 2 * 16 * 10
    assert sum(macs.values()) == stem + embeds + mb3d + head


def test_profile_cli_prints_l1(capsys):
    from nas.profile import main

    main(["arch=l1"])
    out = capsys.readouterr().out
    assert "12.29M" in out and "1.291G" in out
