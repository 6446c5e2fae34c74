"""The supernet of MetaPaths (paper Section 4.1, Eq. 8).

Every block position is a MetaPath that mixes its candidate blocks:

    X_{i+1} = sum_n  w_i^n * MP_i^n(X_i),      w_i = softmax((alpha_i + eps_i) / tau)

Stages 1-2 choose from {MB4D, Identity}, stages 3-4 from {MB4D, MB3D, Identity}. Tensors stay 4D
between MetaPaths: the MB3D branch flattens to tokens, applies MB3D and reshapes back, which is exact, so a
path through the supernet computes the same function as `build_model` of that path's spec.

Noise eps: "gumbel" (-log(-log U), the default, as in DARTS/FBNet), "uniform" (the paper's literal
eps ~ U(0, 1)) or "none". `hard=True` is our addition (straight-through Gumbel): the forward pass runs only
the sampled branch of each MetaPath, while the gradient reaches alpha through the soft weights.
In eval mode there is no noise: soft mode mixes with softmax(alpha / tau), hard mode runs the argmax path.

Narrower widths. `forward(x, widths=...)` runs the supernet with every stage narrowed to the first `widths[i]`
channels (and each MLP to its first mlp_ratio x width hidden units), on views of the full weights: a narrower supernet
of the same space, built once per widths on the meta device, is called with those views (`torch.func.functional_call`).
Width-sampled training (`nas.train_supernet supernet.width_sampling=true`) trains such prefixes beside the full
network, and a supernet trained so extracts its narrower networks by prefix (`channel_order="prefix"`) rather than by
the L1 criterion of `supernet/slicing.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from supernet.arch import ArchSpec, StageSpec
from supernet.blocks import Embedding, Flat, Unflat
from supernet.model import EfficientViT, make_block
from supernet.slicing import (
    BLOCK_ROLES,
    CLASSIFIER_ROLES,
    EMBED_ROLES,
    NORM_ROLES,
    STEM_ROLES,
    channel_scores,
    hidden_scores,
    prefix_tensor,
    slice_state,
    top_k,
)
from supernet.space import Choices, SpaceConfig, stages_of

NOISE = ("gumbel", "uniform", "none")
CHANNEL_ORDERS = ("importance", "prefix")  # how extract() picks a narrower stage's channels


class MetaPath(nn.Module):
    """One block position: an MB4D branch, an MB3D branch in stages 3-4, and the identity."""

    def __init__(self, dim: int, choices: tuple[str, ...], spec: ArchSpec, resolution: int, drop_path: float):
        super().__init__()
        self.choices = choices
        self.mb4d = make_block("4d", dim, spec, resolution, drop_path)
        self.mb3d = make_block("3d", dim, spec, resolution, drop_path) if "3d" in choices else None
        self.flat, self.unflat = Flat(), Unflat(resolution)

    def branch(self, code: str, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        if code == "4d":
            return self.mb4d(x)
        if code == "3d":
            return self.unflat(self.mb3d(self.flat(x)))
        return x

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: list[int] | None = None) -> torch.Tensor:
        """Mix the branches listed in `active` (all of them when None) by `weights` (n_choices,). The weights stay
        on the device: nothing here reads a tensor value on the host, so a forward never waits for the GPU. In hard
        mode `active` is the one sampled branch, whose weight (1 in value) carries the straight-through gradient."""
        out = None
        for j in range(len(self.choices)) if active is None else active:
            y = weights[j] * self.branch(self.choices[j], x)
            out = y if out is None else out + y
        return out


class SuperStage(nn.Module):
    def __init__(
        self,
        in_dim: int,
        stage: StageSpec,
        choices: tuple[str, ...],
        spec: ArchSpec,
        resolution: int,
        downsample: bool,
        drop_path: list[float],
    ):
        super().__init__()
        self.downsample = Embedding(in_dim, stage.width) if downsample else nn.Identity()
        self.paths = nn.ModuleList(
            MetaPath(stage.width, choices, spec, resolution, drop_path[j]) for j in range(stage.depth)
        )

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, active: list[int] | None = None
    ) -> torch.Tensor:  # weights: (depth, n_choices); active: one branch index per MetaPath, or None for all
        x = self.downsample(x)
        for j, (path, w) in enumerate(zip(self.paths, weights)):
            x = path(x, w, None if active is None else [active[j]])
        return x


class SuperNet(EfficientViT):
    """EfficientViT whose stages hold MetaPaths; `alphas[i]` is a (depth_i, n_choices_i) parameter."""

    def __init__(
        self,
        space: SpaceConfig,
        num_classes: int,
        in_chans: int = 3,
        noise: str = "gumbel",
        hard: bool = False,
        tau: float = 5.0,
        channel_order: str = "importance",
        widths: tuple[int, ...] | None = None,
    ):
        """`widths`: build the supernet narrower than its space (the stem keeps the space's width): the template
        that `forward(widths=)` calls with views of the full weights."""
        if noise not in NOISE:
            raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        self.space = space
        self.stage_choices = tuple(space.choices(i) for i in range(4))
        spec = space.max_spec(num_classes, in_chans)
        if widths is not None:
            spec = spec.replace(stages=tuple(StageSpec(w, s.blocks) for w, s in zip(widths, spec.stages))).validate()
        super().__init__(spec)
        self.channel_order = channel_order
        self._narrow: dict[tuple[int, ...], SuperNet] = {}  # forward(widths=)'s templates, on the meta device
        self.alphas = nn.ParameterList(
            nn.Parameter(torch.zeros(d, len(c))) for d, c in zip(space.depths, self.stage_choices)
        )
        self.noise, self.hard, self.tau = noise, hard, tau

    def make_stage(self, i: int, in_dim: int, drop_path: list[float]) -> nn.Module:
        spec = self.spec
        return SuperStage(
            in_dim, spec.stages[i], self.stage_choices[i], spec, spec.stage_resolution(i), i > 0, drop_path
        )

    # --------------------------------------------------------------------------------- parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("alphas.")]

    # ----------------------------------------------------------------------------------- mixture
    def mixture_weights(self) -> list[torch.Tensor]:
        """Per stage, (depth, n_choices) weights for this forward pass (noise and tau in training only)."""
        out = []
        for alpha in self.alphas:
            logits = alpha
            if self.training and self.noise != "none":
                u = torch.rand_like(alpha).clamp_(1e-9, 1 - 1e-9)
                logits = alpha + (-torch.log(-torch.log(u)) if self.noise == "gumbel" else u)
            soft = F.softmax(logits / self.tau, dim=-1)
            if self.hard:  # scatter, not F.one_hot: one_hot validates its indices on the host (a GPU sync)
                one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
                soft = one_hot - soft.detach() + soft if self.training else one_hot
            out.append(soft)
        return out

    def sampled_branches(self, weights: list[torch.Tensor]) -> list[list[int]]:
        """Hard mode: the branch each MetaPath runs, per stage. One device-to-host copy for the whole network."""
        flat = torch.cat([w.argmax(-1) for w in weights]).tolist()
        out, k = [], 0
        for w in weights:
            out.append(flat[k : k + w.shape[0]])
            k += w.shape[0]
        return out

    def forward_features(self, x: torch.Tensor, weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        weights = self.mixture_weights() if weights is None else weights
        active = self.sampled_branches(weights) if self.hard else [None] * len(weights)
        x = self.stem(x)
        for stage, w, a in zip(self.stages, weights, active):
            x = stage(x, w, a)
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)

    def forward(
        self, x: torch.Tensor, weights: list[torch.Tensor] | None = None, widths: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """`widths`: run the network narrowed to the first `widths[i]` channels of each stage (module doc)."""
        if widths is not None and tuple(widths) != tuple(self.spec.widths):
            weights = self.mixture_weights() if weights is None else weights
            template = self._template(tuple(widths))
            template.train(self.training)
            template.hard, template.distilled_training = self.hard, self.distilled_training
            return torch.func.functional_call(template, self.narrowed_tensors(widths), (x, weights))
        return self.forward_head(self.forward_features(x, weights))

    # ---------------------------------------------------------------------------------- narrower
    def width_grid(self, step: int) -> list[list[int]]:
        """Per stage, the widths a search can narrow it to: multiples of `step` up to the stage's width."""
        return [list(range(step, w + 1, step)) or [w] for w in self.spec.widths]

    def sample_widths(self, step: int) -> tuple[int, ...]:
        """One width per stage, uniformly from `width_grid(step)`, drawn from torch's global generator."""
        return tuple(g[int(torch.randint(len(g), ()))] for g in self.width_grid(step))

    def narrowed_tensors(self, widths: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Every parameter and buffer but alpha, narrowed to the prefix `widths` keep (views of the full tensors)."""
        hidden = [int(w * self.spec.mlp_ratio) for w in widths]
        out = {}
        for name, t in [*self.named_parameters(), *self.named_buffers()]:
            top, *rest = name.split(".")
            if top == "alphas":
                continue
            if top == "stem":
                roles, sizes = STEM_ROLES, {"c": widths[0]}
            elif top == "stages" and rest[1] == "downsample":  # stages.<i>.downsample.<key>
                i, rest = int(rest[0]), rest[2:]
                roles, sizes = EMBED_ROLES, {"c": widths[i], "p": widths[i - 1]}
            elif top == "stages":  # stages.<i>.paths.<j>.mb4d|mb3d.<key>
                i, rest = int(rest[0]), rest[4:]
                roles, sizes = BLOCK_ROLES, {"c": widths[i], "h": hidden[i]}
            else:  # norm, head, head_dist
                roles, sizes = (NORM_ROLES if top == "norm" else CLASSIFIER_ROLES), {"c": widths[-1]}
            key = ".".join(rest)
            out[name] = prefix_tensor(t, roles[key], sizes) if key in roles else t
        return out

    def _template(self, widths: tuple[int, ...]) -> SuperNet:
        """The narrower supernet whose parameter shapes are `narrowed_tensors(widths)`'s, built once per widths on
        the meta device (no memory, no draw from the random generator); its shapes are checked against the views."""
        if widths not in self._narrow:
            if len(widths) != len(self.spec.widths) or any(not 0 < w <= m for w, m in zip(widths, self.spec.widths)):
                raise ValueError(f"widths {widths}: one per stage, each in 1..{list(self.spec.widths)}")
            with torch.device("meta"):
                template = SuperNet(
                    self.space, self.num_classes, self.spec.in_chans, self.noise, self.hard, self.tau, widths=widths
                )
            views = self.narrowed_tensors(widths)
            for name, t in [*template.named_parameters(), *template.named_buffers()]:
                if name in views and views[name].shape != t.shape:
                    raise RuntimeError(
                        f"narrowing {name} to widths {widths}: {tuple(views[name].shape)}, "
                        f"the narrower network has {tuple(t.shape)}"
                    )
            self._narrow[widths] = template
        return self._narrow[widths]

    def path_weights(self, choices: Choices) -> list[torch.Tensor]:
        """One-hot mixture weights that restrict the supernet to `choices`."""
        return [
            torch.tensor([[float(c == code) for code in opts] for c in stage], device=self.alphas[0].device)
            for stage, opts in zip(choices, self.stage_choices)
        ]

    # -------------------------------------------------------------------------------- importance
    @torch.no_grad()
    def probabilities(self) -> list[torch.Tensor]:
        """softmax(alpha) per stage: (depth, n_choices), columns in `stage_choices[i]` order."""
        return [F.softmax(a.detach().float(), dim=-1) for a in self.alphas]

    @torch.no_grad()
    def importance(self) -> tuple[list[list[float]], list[float]]:
        """Section 4.2 in log space. Per MetaPath the log-odds of keeping it, log(p4D/pI) in stages 1-2 and
        log((p3D+p4D)/pI) in stages 3-4, computed from alpha as logsumexp(alpha_keep) - alpha_I so that it never
        overflows (the plain ratio is inf in float32 once an alpha gap passes ~88). Per stage, the log of the
        paper's sum of ratios over *all* of its MetaPaths (logsumexp of their log-odds): a stage's importance does
        not change when the search empties it."""
        paths, stages = [], []
        for a, opts in zip(self.alphas, self.stage_choices):
            a = a.detach().double()
            keep = torch.logsumexp(a[:, [opts.index(c) for c in opts if c != "id"]], dim=-1)
            log_odds = keep - a[:, opts.index("id")]
            paths.append(log_odds.tolist())
            stages.append(torch.logsumexp(log_odds, dim=0).item() if len(log_odds) else -math.inf)
        return paths, stages

    @torch.no_grad()
    def alpha_entropy(self) -> float:
        """Mean entropy (nats) of softmax(alpha) over all MetaPaths: log(n) at the uniform start, 0 when decided."""
        ents = [-(p * p.clamp_min(1e-12).log()).sum(-1) for p in self.probabilities()]
        return torch.cat(ents).mean().item()

    # ---------------------------------------------------------------------------------- deriving
    def derive(self, include_identity: bool = False) -> Choices:
        """The most probable consistent path: per stage, the assignment with the highest sum of log p subject to
        MB3D forming a suffix of the stage. With `include_identity=False` every MetaPath takes its more probable
        non-identity block (the slimming start, paper Section 4.2)."""
        out = []
        for p, opts in zip(self.probabilities(), self.stage_choices):
            logp = p.clamp_min(1e-12).log()
            best, best_score = None, -math.inf
            for k in range(p.shape[0] + 1) if "3d" in opts else [p.shape[0]]:  # positions >= k may be 3d
                stage, score = [], 0.0
                for j in range(p.shape[0]):
                    allowed = ["4d" if j < k else "3d"] + (["id"] if include_identity else [])
                    c = max(allowed, key=lambda code: logp[j, opts.index(code)].item())
                    stage.append(c)
                    score += logp[j, opts.index(c)].item()
                if score > best_score:
                    best, best_score = stage, score
            out.append(tuple(best))
        return tuple(out)

    def spec_of(self, choices: Choices, widths: tuple[int, ...] | None = None) -> ArchSpec:
        """The concrete spec of a path (identity MetaPaths dropped), optionally at narrower stage widths."""
        widths = widths or self.spec.widths
        return self.spec.replace(stages=stages_of(choices, widths)).validate()

    @torch.no_grad()
    def extract(self, choices: Choices, widths: tuple[int, ...] | None = None) -> EfficientViT:
        """`build_model(spec_of(choices, widths))` with the supernet's weights copied in (inherited weights), on the
        supernet's device.
        Narrower widths keep each stage's most important channels (criterion in `supernet/slicing.py`)."""
        spec = self.spec_of(choices, widths)
        with torch.device(self.head.weight.device):  # built where the supernet lives (nas.slim device=)
            sub = EfficientViT(spec)
        active = [
            [getattr(path, "mb" + c) for path, c in zip(stage.paths, codes) if c != "id"]
            for stage, codes in zip(self.stages, choices)
        ]
        idx = []
        for i, stage in enumerate(self.stages):
            if self.channel_order == "prefix":  # trained by width sampling: the prefix is the narrower network
                idx.append(torch.arange(spec.widths[i]))
                continue
            producer = self.stem.conv2.weight if i == 0 else stage.downsample.conv.weight
            scores = channel_scores(producer, [b.state_dict() for b in active[i]])
            idx.append(top_k(scores, spec.widths[i]))
        sub.stem.load_state_dict(slice_state(self.stem.state_dict(), STEM_ROLES, {"c": idx[0]}))
        for i, (sub_stage, stage) in enumerate(zip(sub.stages, self.stages)):
            if i > 0:
                index = {"c": idx[i], "p": idx[i - 1]}
                sub_stage.downsample.load_state_dict(slice_state(stage.downsample.state_dict(), EMBED_ROLES, index))
            blocks = [b for b in sub_stage.blocks if not isinstance(b, (Flat, Unflat))]
            hidden = int(spec.widths[i] * spec.mlp_ratio)
            for block, src in zip(blocks, active[i], strict=True):
                sd = src.state_dict()
                h = torch.arange(hidden) if self.channel_order == "prefix" else top_k(hidden_scores(sd), hidden)
                index = {"c": idx[i], "h": h}
                block.load_state_dict(slice_state(sd, BLOCK_ROLES, index))
        sub.norm.load_state_dict(slice_state(self.norm.state_dict(), NORM_ROLES, {"c": idx[3]}))
        sub.head.load_state_dict(slice_state(self.head.state_dict(), CLASSIFIER_ROLES, {"c": idx[3]}))
        sub.head_dist.load_state_dict(slice_state(self.head_dist.state_dict(), CLASSIFIER_ROLES, {"c": idx[3]}))
        return sub
