import math

import pytest
import torch

from supernet import build_model
from supernet.supernet import SuperNet
from tests.helpers import SMALL_SUPERNET_SPACE, randomize_state

SMALL = SMALL_SUPERNET_SPACE


def _set_one_hot(net: SuperNet, choices) -> None:
    """alpha = log of a one-hot distribution: 0 for the chosen block, -inf elsewhere."""
    with torch.no_grad():
        for a, stage, opts in zip(net.alphas, choices, net.stage_choices):
            a.fill_(-math.inf)
            for j, c in enumerate(stage):
                a[j, opts.index(c)] = 0.0


CHOICES = [
    (("4d", "id"), ("4d",), ("4d", "3d", "3d"), ("3d", "3d")),  # MB3D in stage 3 -> reshape back for stage 4
    (("id", "4d"), ("id",), ("id", "4d", "id"), ("4d", "3d")),
    (("4d", "4d"), ("4d",), ("4d", "4d", "4d"), ("4d", "4d")),
]


@pytest.mark.parametrize("choices", CHOICES)
@pytest.mark.parametrize("hard", [False, True])
def test_one_hot_alpha_equals_build_model_of_derived_spec(choices, hard):
    """Oracle: with one-hot alpha and no noise, the supernet computes exactly build_model(derived spec)."""
    net = SuperNet(SMALL, num_classes=10, noise="gumbel", hard=hard)
    randomize_state(net, seed=4)
    _set_one_hot(net, choices)
    net.eval()
    assert net.derive(include_identity=True) == choices
    spec = net.spec_of(choices)
    assert spec.depths == tuple(sum(c != "id" for c in s) for s in choices)
    ref = build_model(spec).eval()
    ref.load_state_dict(net.extract(choices).state_dict())  # an independent build, weights copied over
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        y_super, y_ref = net(x), ref(x)
        y_path = net(x, net.path_weights(choices))
    assert y_ref.abs().max() > 1e-2
    assert torch.equal(y_super, y_ref) or (y_super - y_ref).abs().max() <= 1e-6
    assert (y_path - y_ref).abs().max() <= 1e-6


def test_importance_formulas_on_hand_set_alpha():
    net = SuperNet(SMALL, num_classes=10)
    probs = [
        [[0.6, 0.4], [0.2, 0.8]],  # stage 1: p4D/pI = 1.5, 0.25
        [[0.5, 0.5]],  # stage 2: 1.0
        [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1]],  # stage 3: (p3D+p4D)/pI = 1.0, 0.25, 9.0
        [[0.3, 0.3, 0.4], [0.0625, 0.0625, 0.875]],  # stage 4: 1.5, 1/7
    ]
    with torch.no_grad():
        for a, p in zip(net.alphas, probs):
            a.copy_(torch.tensor(p).log() + 3.0)  # softmax is shift-invariant
    per_path, per_stage = net.importance()
    expected = [[1.5, 0.25], [1.0], [1.0, 0.25, 9.0], [1.5, 1 / 7]]  # the paper's ratios; importance is their log
    for got, exp in zip(per_path, expected):
        assert got == pytest.approx([math.log(e) for e in exp], rel=1e-5, abs=1e-6)
    sums = [1.75, 1.0, 10.25, 1.5 + 1 / 7]  # per stage, the sum of ratios over all its MetaPaths
    assert per_stage == pytest.approx([math.log(v) for v in sums], rel=1e-5, abs=1e-6)
    assert net.alpha_entropy() < math.log(3)


def test_importance_does_not_overflow_where_the_plain_ratio_does():
    """Defect 3 of #13: p_keep / p_I in float32 is inf once an alpha gap passes ~88, so rankings fell to
    tie-breaks. Log-odds keep the order: a gap of 200 ranks above a gap of 100."""
    net = SuperNet(SMALL, num_classes=10)
    with torch.no_grad():
        net.alphas[0].copy_(torch.tensor([[100.0, 0.0], [200.0, 0.0]]))
    p = torch.softmax(net.alphas[0].float(), -1)
    assert torch.isinf(p[:, 0] / p[:, 1]).all()  # the old formula: both inf, a tie
    per_path, per_stage = net.importance()
    assert per_path[0] == pytest.approx([100.0, 200.0])
    assert per_stage[0] == pytest.approx(200.0)  # log(e^100 + e^200)
    assert all(math.isfinite(v) for s in per_path for v in s)


def test_derive_keeps_mb3d_a_suffix_with_the_most_likely_assignment():
    net = SuperNet(SMALL, num_classes=10)
    with torch.no_grad():
        # stage 3 prefers 3d, 4d, 3d: not a suffix. Log-probs: 4d-4d-3d = log(.3*.6*.6) beats 3d-3d-3d = log(.6*.3*.6)?
        # equal products, so compare with distinct numbers: position 0 leans 3d weakly, position 1 leans 4d strongly.
        net.alphas[2].copy_(torch.tensor([[0.4, 0.5, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]).log())
    choices = net.derive()
    assert choices[2] == ("4d", "4d", "3d")  # .4*.8*.7 = .224 > 3d-3d-3d .5*.1*.7 = .035 > all-4d .4*.8*.2
    assert all(c != "id" for stage in choices for c in stage)
    net.spec_of(choices).validate()


@pytest.mark.parametrize("noise", ["gumbel", "uniform"])
def test_training_noise_and_eval_without_noise(noise):
    net = SuperNet(SMALL, num_classes=10, noise=noise, tau=1.0)
    net.train()
    w1, w2 = net.mixture_weights(), net.mixture_weights()
    assert not torch.equal(w1[0], w2[0])  # noisy in training
    for w in w1:
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[0]))
    net.eval()
    assert all(torch.allclose(w, torch.full_like(w, 1 / w.shape[-1])) for w in net.mixture_weights())  # alpha = 0
    if noise == "uniform":  # eps in (0, 1) at tau=1 bounds each weight's odds ratio by e
        net.train()
        w = net.mixture_weights()[2]
        assert (w.max(-1).values / w.min(-1).values).max() <= math.e + 1e-5


def test_hard_mode_runs_one_branch_and_still_trains_alpha():
    torch.manual_seed(0)
    net = SuperNet(SMALL, num_classes=10, hard=True)
    net.train()
    ran = []  # (MetaPath, branch) of every block branch that ran in stage 3
    for j, path in enumerate(net.stages[2].paths):
        path.mb4d.register_forward_hook(lambda *a, j=j: ran.append((j, "4d")))
        path.mb3d.register_forward_hook(lambda *a, j=j: ran.append((j, "3d")))
    used = []  # the weights the forward pass drew (the oracle for which branch each MetaPath must run)
    draw = net.mixture_weights
    net.mixture_weights = lambda: used.append(draw()) or used[-1]
    loss = net(torch.randn(2, 3, 64, 64)).logsumexp(-1).mean()
    loss.backward()
    (w,) = used
    for stage in w:
        assert torch.equal(stage.detach().sum(-1), torch.ones(stage.shape[0]))
        assert ((stage.detach() == 0) | (stage.detach() == 1)).all()
    choices = net.space.choices(2)
    picked = [choices[int(k)] for k in w[2].detach().argmax(-1)]
    assert ran and sorted(ran) == sorted((j, c) for j, c in enumerate(picked) if c != "id")  # the sampled ones
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)


def test_tau_schedules():
    from nas.training.supernet_trainer import SupernetConfig

    c = SupernetConfig(tau_start=5.0, tau_end=0.5)
    assert c.tau(0, 10) == 5.0 and c.tau(9, 10) == pytest.approx(0.5)
    f = SupernetConfig(tau_start=5.0, tau_decay=0.956, tau_end=0.01)
    assert f.tau(3, 90) == pytest.approx(5.0 * 0.956**3)


def test_narrowing_removes_exactly_the_dead_channels():
    """Oracle for channel slicing: make some channels of stage 2 and some MLP hidden units provably dead (all
    weights producing and reading them zero). Narrowing to the live ones must then give the same logits as the
    full-width network, and the sliced weights must load into build_model of the narrower spec."""
    net = SuperNet(SMALL, num_classes=10)
    randomize_state(net, seed=5)
    choices = (("4d", "4d"), ("4d",), ("4d", "id", "4d"), ("4d", "3d"))
    g = torch.Generator().manual_seed(0)
    dead = torch.randperm(32, generator=g)[:16]  # stage 2 (index 1): 32 -> 16 channels
    with torch.no_grad():
        emb = net.stages[1].downsample
        for t in (emb.conv.weight, emb.conv.bias, emb.norm.weight, emb.norm.bias, emb.norm.running_mean):
            t[dead] = 0
        mlp = net.stages[1].paths[0].mb4d.mlp
        mlp.fc1.weight[:, dead] = 0
        for t in (mlp.fc2.weight, mlp.fc2.bias, mlp.norm2.weight, mlp.norm2.bias, mlp.norm2.running_mean):
            t[dead] = 0
        dead_h = torch.randperm(128, generator=g)[:64]  # its MLP hidden layer: 128 -> 64 units
        for t in (mlp.fc1.weight, mlp.fc1.bias, mlp.norm1.weight, mlp.norm1.bias, mlp.norm1.running_mean):
            t[dead_h] = 0
        mlp.fc2.weight[:, dead_h] = 0
    net.eval()
    full = net.extract(choices)
    narrow = net.extract(choices, widths=(16, 16, 48, 64))
    ref = build_model(net.spec_of(choices, (16, 16, 48, 64))).eval()
    ref.load_state_dict(narrow.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = full.eval()(x), ref(x)
    assert a.abs().max() > 1e-2
    assert (a - b).abs().max() <= 1e-5
    assert narrow.stages[1].blocks[0].mlp.fc1.out_channels == 64


# --------------------------------------------------------------------------- narrower widths (width sampling)
@pytest.mark.parametrize("choices", CHOICES)
def test_a_narrowed_forward_is_the_prefix_network_that_extract_builds(choices):
    """Oracle: `forward(widths=)` runs views of the full weights through a meta-device template; an independent
    build (build_model of the narrower spec, loaded with `extract`'s copied slices) must compute the same logits."""
    net = SuperNet(SMALL, num_classes=10, channel_order="prefix")
    randomize_state(net, seed=6)
    net.eval()
    widths = (16, 16, 32, 48)
    ref = build_model(net.spec_of(choices, widths)).eval()
    ref.load_state_dict(net.extract(choices, widths).state_dict())
    x = torch.randn(2, 3, 64, 64)
    rng = torch.get_rng_state()
    with torch.no_grad():
        y, y_ref = net(x, net.path_weights(choices), widths=widths), ref(x)
    assert torch.equal(torch.get_rng_state(), rng)  # the template was built without a draw
    assert y_ref.abs().max() > 1e-2
    assert (y - y_ref).abs().max() <= 1e-5
    w = net.path_weights(choices)
    with torch.no_grad():  # the full widths take the plain path
        assert torch.equal(net(x, w, widths=(16, 32, 48, 64)), net(x, w))


def test_a_narrowed_forward_equals_the_full_network_whose_extra_channels_are_dead():
    """Oracle independent of slicing: stage 2's channels beyond the first 16 and its MLP's hidden units beyond the
    first 64 made dead (every weight producing or reading them zero), the full network computes what the network
    narrowed to (16, 16, 48, 64) computes."""
    net = SuperNet(SMALL, num_classes=10, channel_order="prefix")
    randomize_state(net, seed=7)
    choices = (("4d", "4d"), ("4d",), ("4d", "id", "4d"), ("4d", "3d"))
    with torch.no_grad():
        emb = net.stages[1].downsample
        for t in (emb.conv.weight, emb.conv.bias, emb.norm.weight, emb.norm.bias, emb.norm.running_mean):
            t[16:] = 0
        net.stages[2].downsample.conv.weight[:, 16:] = 0
        mlp = net.stages[1].paths[0].mb4d.mlp
        mlp.fc1.weight[:, 16:] = 0
        for t in (mlp.fc2.weight, mlp.fc2.bias, mlp.norm2.weight, mlp.norm2.bias, mlp.norm2.running_mean):
            t[16:] = 0
        for t in (mlp.fc1.weight, mlp.fc1.bias, mlp.norm1.weight, mlp.norm1.bias, mlp.norm1.running_mean):
            t[64:] = 0
        mlp.fc2.weight[:, 64:] = 0
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    w = net.path_weights(choices)
    with torch.no_grad():
        full, narrow = net(x, w), net(x, w, widths=(16, 16, 48, 64))
    assert full.abs().max() > 1e-2
    assert (full - narrow).abs().max() <= 1e-5


@pytest.mark.parametrize("hard", [False, True])
def test_a_narrowed_training_step_updates_only_the_prefix(hard):
    """Gradients and BatchNorm's running statistics reach the full tensors through the views, on the prefix only;
    alpha is trained through the narrower network too."""
    net = SuperNet(SMALL, num_classes=10, hard=hard, channel_order="prefix")
    randomize_state(net, seed=8)
    net.train()
    emb = net.stages[1].downsample
    before = emb.norm.running_mean.clone()
    net(torch.randn(4, 3, 64, 64), widths=(16, 16, 32, 48)).sum().backward()
    g = emb.conv.weight.grad
    assert g[:16].abs().sum() > 0 and g[16:].abs().sum() == 0
    assert not torch.equal(emb.norm.running_mean[:16], before[:16])
    assert torch.equal(emb.norm.running_mean[16:], before[16:])
    assert net.head.weight.grad[:, 48:].abs().sum() == 0 and net.head.weight.grad[:, :48].abs().sum() > 0
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)


def test_width_grid_and_samples():
    net = SuperNet(SMALL, num_classes=10)
    assert net.width_grid(16) == [[16], [16, 32], [16, 32, 48], [16, 32, 48, 64]]
    torch.manual_seed(0)
    seen = {net.sample_widths(16) for _ in range(200)}
    assert all(w in g for ws in seen for w, g in zip(ws, net.width_grid(16)))
    assert len({ws[3] for ws in seen}) == 4  # every width of the last stage drawn
    with pytest.raises(ValueError, match="widths"):
        net(torch.randn(1, 3, 64, 64), widths=(16, 16, 48, 80))


# ------------------------------------------------------------------------------------------- no host sync
def _count_host_reads(monkeypatch):
    """Count every way a tensor value reaches the host in Python: .item(), .tolist(), bool(), float(), int()."""
    calls = {"item": 0, "tolist": 0, "scalar": 0}
    for name, key in (
        ("item", "item"),
        ("tolist", "tolist"),
        ("__bool__", "scalar"),
        ("__float__", "scalar"),
        ("__int__", "scalar"),
    ):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _key=key, **kw):
            calls[_key] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return calls


@pytest.mark.parametrize("training", [True, False])
def test_soft_forward_never_reads_a_tensor_on_the_host(monkeypatch, training):
    net = SuperNet(SMALL, num_classes=10).train(training)
    x = torch.randn(2, 3, SMALL.input_size, SMALL.input_size)
    calls = _count_host_reads(monkeypatch)
    net(x).sum().backward() if training else net(x)
    assert calls == {"item": 0, "tolist": 0, "scalar": 0}


def test_hard_forward_reads_the_sampled_branches_once(monkeypatch):
    net = SuperNet(SMALL, num_classes=10, hard=True).train()
    x = torch.randn(2, 3, SMALL.input_size, SMALL.input_size)
    calls = _count_host_reads(monkeypatch)
    net(x).sum().backward()
    assert calls == {"item": 0, "tolist": 1, "scalar": 0}  # one copy for all MetaPaths, not one per MetaPath
    assert sum(len(d) for d in net.sampled_branches(net.mixture_weights())) == sum(SMALL.depths)


@pytest.mark.gpu
def test_soft_forward_has_no_cuda_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    net = SuperNet(SMALL, num_classes=10).cuda().train()
    x = torch.randn(2, 3, SMALL.input_size, SMALL.input_size, device="cuda")
    net(x)  # warm-up (lazy initialisation may synchronise once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        net(x)
        net.eval()(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
