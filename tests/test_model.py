import pytest
import timm
import torch

from supernet import build_model
from supernet.arch import PRESETS, ArchSpec, StageSpec
from supernet.blocks import Flat, Unflat
from supernet.complexity import count_macs, count_params
from tests.helpers import randomize_state

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


# ------------------------------------------------------------------------------------- timm's model API
def emitted_tiny():
    """What nas.slim emits on the tiny space: a path extracted from the supernet (weights sliced), here one whose
    stage 3 ends in MB3D *before* stage 4 (so its tokens are reshaped back) and whose stage 4 ends in MB4D."""
    import yaml

    from supernet.arch import AttentionSpec
    from supernet.space import SpaceConfig
    from supernet.supernet import SuperNet

    space = SpaceConfig(**yaml.safe_load(open("search_configs/space/tiny.yaml")))
    space.attention = AttentionSpec(**space.attention)
    net = SuperNet(space, num_classes=10)
    randomize_state(net, seed=4)
    choices = (("4d", "id"), ("4d", "4d"), ("4d", "id", "3d", "3d"), ("4d", "4d", "id"))
    return net.extract(choices, (32, 48, 96, 112)).eval()


def test_timm_oracle_forward_intermediates_and_feature_info_on_l1():
    """Oracle: timm's own EfficientFormer-L1 with the same weights gives the same four NCHW maps (its last stage's
    tokens reshaped by timm's code), the same final features, and the same feature_info channels and strides."""
    ref = timm.create_model("efficientformer_l1", pretrained=False).eval()
    randomize_state(ref, seed=2)
    ours = build_model(PRESETS["l1"]).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for norm in (False, True):
            (fa, ia), (fb, ib) = ref.forward_intermediates(x, norm=norm), ours.forward_intermediates(x, norm=norm)
            assert [t.shape for t in ib] == [(2, 48, 56, 56), (2, 96, 28, 28), (2, 224, 14, 14), (2, 448, 7, 7)]
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ia, ib))
            assert torch.allclose(fa, fb, atol=1e-5)
        only = ours.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        assert len(only) == 2 and torch.equal(only[0], ib[1])
    assert [(f["num_chs"], f["reduction"]) for f in ours.feature_info] == [
        (f["num_chs"], f["reduction"]) for f in ref.feature_info
    ]


def test_forward_intermediates_on_an_emitted_tiny_arch_with_an_mb3d_ending_stage():
    """Oracle: forward hooks on the modules feature_info names. Each map is NCHW at its stated channels and stride;
    stage 3 (ending in MB3D, then reshaped back by the network itself) is exactly that module's output, and the
    last stage's normed map, mean-pooled, is exactly the classifier's input in `forward`."""
    model = emitted_tiny()
    assert model.spec.stages[2].blocks[-1] == "3d" and model.spec.stages[3].blocks[-1] == "4d"
    hooked = {}
    for info in model.feature_info:
        model.get_submodule(info["module"]).register_forward_hook(
            lambda m, i, o, name=info["module"]: hooked.__setitem__(name, o)
        )
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats, maps = model.forward_intermediates(x, norm=True)
        pooled = model.forward_head(feats, pre_logits=True)
    for info, m in zip(model.feature_info, maps):
        side = 64 // info["reduction"]
        assert m.shape == (3, info["num_chs"], side, side)
    for i in range(3):
        assert torch.equal(maps[i], hooked[f"stages.{i}"])
    assert hooked["stages.3"].ndim == 3  # the last stage ends on tokens: the map is their reshape
    assert torch.allclose(maps[3].mean(dim=(2, 3)), pooled, atol=1e-6)
    assert torch.allclose(model.forward_head(feats), model(x), atol=1e-6)


@pytest.mark.parametrize("make", [lambda: build_model(PRESETS["l1"]), emitted_tiny], ids=["l1", "emitted-tiny"])
def test_get_and_reset_classifier(make):
    model = make().eval()
    head, head_dist = model.get_classifier()
    assert head is model.head and head_dist is model.head_dist
    size = model.spec.input_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.spec.num_classes == 5
        model.reset_classifier(0)  # timm: no classifier, forward returns the pooled features
        assert torch.allclose(model(x), pooled, atol=1e-6)
        model.reset_classifier(3)
        fused = model.fuse()(x)
    assert fused.shape == (2, 3)
