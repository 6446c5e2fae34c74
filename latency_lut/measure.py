"""Measuring a latency table: what each row times, and the interleaved timing method.

What a row times: its cost *inside a network*, as the difference between two chains. For a layer row, a
minimal network containing the layer is built with `build_model` and fused for deployment; its own layer
modules (`EfficientViT.layer_modules`, in `layer_plan` order) up to and including the layer form one chain, and
the same modules up to the layer before it form the other. Both run on an image, through the backend, and the
row is the difference of their latencies. So the row sees the input layout, contiguity and dtype, the caches, and
the neighbouring layer that it sees in a network, and costs a backend pays once per call (onnxruntime's session
call and its layout conversions at the graph's edges, torch's dispatch into inference mode) cancel. The chain
differences of a network's layers telescope: their sum plus the empty chain (`call`, the backend's per-call
overhead, measured once) is a whole network. There is no second copy of the model code.

How items are timed: in groups of `interleave` (a row's two chains always in one group): each item gets
`warmup` untimed runs, then `rounds` rounds in which every item of the group runs `runs_per_round` times back to
back, in a freshly shuffled order each round. Back to back is how a deployed model runs, inference after
inference, so chains and whole networks (calibration, validation, `--verify`) are all timed that way. Shuffling
spreads machine drift over all items instead of biasing one. Each group is measured in `passes` passes, separated
in time by the other groups of its chunk, so that a slow period of the machine biases one pass only: a row keeps
its median pass, a whole network its fastest (interference only ever slows a network down). Within a pass, an
item's latency is the `percentile` (default 25) of its timings: on a shared machine interference only ever slows
a run down, and a low percentile is far more repeatable than the median. p25/p75 give the spread. Each finished
chunk of groups is written at once, so a crash loses at most the chunk in flight.

The host gate: every group also times a sentinel, a small fixed network (`sentinel_spec`). A pass of a group is slow
when its sentinel ran more than `gate_pct` slower than its median of the last few minutes, and beyond the scatter of
those readings (`Gate.limit`). When at least half of a group's passes are slow, so that its median pass would be
too, they are measured again, after a pause, until they are not (at most `gate_retries` times; the pass whose
sentinel was fastest is kept); a lone slow pass is left to the combination of passes, which drops it. A host can go
through periods of seconds in which everything runs up to 2x slower, most of all at as many threads as it has cores
(benchmarks/README.md section 9). Such a period outlasts all passes of a chunk, so combining passes cannot remove
it; re-measuring after it has passed can. `Gate` counts what the gate did.

Read against the sentinel (`normalize`, on for a build): the gate only acts on passes more than `gate_pct` slow, but
the host's speed wanders by less than that all the time, and for minutes. So a build divides every item of a pass by
that pass's sentinel reading relative to the sentinel's recent median (`bundle_measure.normalize`): the table then
holds each row at the host's typical speed during the build, whenever it was timed. Each row also keeps `raw_ms`,
the same combination of its passes as timed, and the table says how much its calibration networks varied both ways.
Whole networks measured for validation, `--verify` and export are read as timed (`measure_networks`): they are the
yardstick, what a deployment benchmark would see.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from latency_lut.backends import Backend, Runner
from latency_lut.bundle_measure import Gate, measure_chunk, time_group
from latency_lut.table import Row
from supernet.arch import ArchSpec, StageSpec
from supernet.model import build_model, layer_plan
from supernet.space import SpaceConfig

log = logging.getLogger(__name__)

CALL = Row("call", 0, 0, 0, 0)  # the backend's per-call overhead: an identity module run through the backend


@dataclass
class MeasureConfig:
    warmup: int = 10
    rounds: int = 20
    runs_per_round: int = 5  # back to back, as a deployed model runs inference after inference
    interleave: int = 8  # items timed together per group (a row is two items: its two chains)
    seed: int = 0
    percentile: float = 25.0  # the statistic of an item's timings: interference only ever slows a run down, so a
    # low percentile is far more repeatable on a shared machine than the median (../shared/DESIGN.md, noise floor)
    passes: int = 3  # each group is measured this many times, separated in time by the other groups of its chunk:
    # a slow period of the machine then biases one pass, which the combination drops (see `combine_passes`)
    chunk: int = 8  # groups per chunk: passes run within a chunk, so a crash loses at most one chunk
    min_rounds: int = 0  # > 0: adaptive. A group stops before `rounds` once it has run this many rounds and every
    settle_pct: float = 1.0  # item's statistic moved by less than this % in each of the last two rounds (large
    # networks, e.g. the l7 space at 224 px, settle fast; their builds would take hours at fixed round counts)
    references: int = 2  # whole networks timed at build time, added to every group of a validation or --verify
    # measurement, so that each group is read relative to the machine's speed at build time (`measure_networks`)
    gate_pct: float = 10.0  # the host gate (module doc): a group pass whose sentinel ran more than this % slower
    # than its median of the last `gate_window_s` (and beyond its scatter) is measured again; 0 turns the gate off
    gate_retries: int = 4  # at most this many re-measurements of a chunk's slow passes, then the fastest is kept
    gate_wait_s: float = 0.25  # pause before the first re-measurement, doubled before each further one (0.25,
    # 0.5, 1, 2 s): 69-100% of the host's slow periods ended within 1 s, 92-100% within 4 s (benchmarks/README.md s. 9)
    gate_window_s: float = 300.0  # the sentinel's median is taken over this window: slow drift passes the gate
    normalize: bool = True  # a build reads every group pass against its sentinel (bundle_measure.normalize): the
    # rows then hold the host's typical speed over the build, not the speed of the seconds each was timed in.
    # Validation, --verify and export measure plainly (measure_networks), as a deployment benchmark would


@dataclass(frozen=True)
class Net:
    """A whole network measured as one item (a calibration network). A table measures each calibration network
    on several `visit`s spread over the build (see `plan_groups`) and keeps their median, so that a slow period of
    the machine that covers one visit does not move the calibration."""

    index: int
    spec: ArchSpec
    visit: int = 0


@dataclass(frozen=True)
class Chain:
    """One of a layer row's two chains: its context network's layers up to and including it, or up to before it."""

    row: Row
    with_row: bool


Item = Row | Net  # what a table row is measured for; Chain items are how a Row is measured


def width_options(max_width: int, step: int = 16) -> list[int]:
    """Widths a stage can be narrowed to, in steps of `step` from its full width.

    >>> width_options(64)
    [64, 48, 32, 16]
    >>> width_options(64, 32)
    [64, 32]
    """
    return list(range(max_width, 0, -step))


def space_rows(space: SpaceConfig, num_classes: int, step: int = 16) -> list[Row]:
    """Every row a spec from `space` (any depth, widths narrowed in `step`s, MB3D anywhere legal) can need."""
    opts = [width_options(w, step) for w in space.widths]
    spec = space.max_spec(num_classes)
    res = [spec.stage_resolution(i) for i in range(4)]
    rows = [Row("stem", 0, spec.stem_width, w, space.input_size) for w in opts[0]]
    for i in range(1, 4):
        rows += [Row("embed", i, a, b, res[i - 1]) for a in opts[i - 1] for b in opts[i]]
    for i in range(4):
        rows += [Row("mb4d", i, w, w, res[i]) for w in opts[i]]
        if "3d" in space.choices(i):
            rows += [Row("mb3d", i, w, w, res[i]) for w in opts[i]]
            rows += [Row("flat", i, w, w, res[i]) for w in opts[i]]
            if i < 3:
                rows += [Row("unflat", i, w, w, res[i]) for w in opts[i]]
    if "3d" not in space.choices(3):
        rows += [Row("flat", 3, w, w, res[3]) for w in opts[3]]
    rows += [Row("head", 3, w, num_classes, res[3]) for w in opts[3]]
    return rows


def context_spec(row: Row, base: ArchSpec) -> ArchSpec:
    """The smallest network with `base`'s hyper-parameters that runs `row` (other stages empty).

    >>> from supernet.arch import PRESETS
    >>> s = context_spec(Row("embed", 2, 96, 224, 28), PRESETS["l1"])
    >>> [(st.width, st.blocks) for st in s.stages]
    [(16, ()), (96, ()), (224, ('4d',)), (16, ())]
    """
    widths, blocks = [16] * 4, [()] * 4
    i = row.stage
    if row.kind == "embed":
        widths[i - 1], widths[i], blocks[i] = row.in_width, row.width, ("4d",)
    elif row.kind == "head":
        widths[i], blocks[i] = row.in_width, ("4d",)
    else:  # stem, mb4d, mb3d, flat, unflat: one block in the row's stage (an MB3D where the row needs tokens)
        widths[i] = row.width
        blocks[i] = ("3d",) if row.kind in ("mb3d", "flat", "unflat") else ("4d",)
    return base.replace(stages=tuple(StageSpec(w, b) for w, b in zip(widths, blocks))).validate()


def context_layers(row: Row, base: ArchSpec) -> tuple[ArchSpec, list[nn.Module], int]:
    """The fused context network of `row`: its spec, its layer modules in plan order, and the row's position."""
    spec = context_spec(row, base)
    model = build_model(spec).eval().fuse()
    keys = [layer.key for layer in layer_plan(spec)]
    if row.key not in keys:  # a bug in context_spec, not user input
        raise ValueError(f"{row} is not a layer of its context network")
    return spec, model.layer_modules(), keys.index(row.key)


@torch.no_grad()
def row_module(row: Row, base: ArchSpec, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The fused deploy module of a layer row and the very input it receives inside a network."""
    spec, modules, k = context_layers(row, base)
    x = torch.randn(batch, spec.in_chans, spec.input_size, spec.input_size)
    for module in modules[:k]:
        x = module(x)
    return modules[k], x


def chain_module(chain: Chain, base: ArchSpec, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """One of a row's two chains (see module doc) and its image input."""
    spec, modules, k = context_layers(chain.row, base)
    x = torch.randn(batch, spec.in_chans, spec.input_size, spec.input_size)
    return nn.Sequential(*modules[: k + int(chain.with_row)]).eval(), x


def item_module(item: Chain | Row | Net, base: ArchSpec, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The deploy module an item times and its image input: a chain, the per-call overhead (`CALL`: the empty
    chain, an identity), or a whole fused network."""
    if isinstance(item, Net):
        return network_module(item.spec, batch)
    if isinstance(item, Chain):
        return chain_module(item, base, batch)
    if item.kind == "call":
        return nn.Identity(), torch.randn(batch, base.in_chans, base.input_size, base.input_size)
    raise ValueError(f"a layer row is measured as two Chain items, not as {item}")


def network_module(spec: ArchSpec, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The fused deploy network of `spec` and a random input."""
    return build_model(spec).eval().fuse(), torch.randn(batch, spec.in_chans, spec.input_size, spec.input_size)


def deployed_weights(module: nn.Module) -> int:
    """The floats a deployed (fused) module stores, the floating-point entries of its state_dict: weights and
    biases, LayerNorm and attention-bias tables. (A fused MB3D also caches its attention biases expanded per token
    pair, a derived buffer not counted; it is under 1% of an `l7` MB3D's weights.)"""
    return sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())


@functools.lru_cache(maxsize=64)
def network_weights(spec: ArchSpec) -> int:
    """A whole fused network's deployed weights (cached: a calibration network is written once per visit)."""
    return deployed_weights(network_module(spec, 1)[0])


def item_weights(item: Item, base: ArchSpec) -> int:
    """The deployed weights of what a table row stands for: a layer row's own fused module (in its context
    network, as the table times it), a whole calibration network, or nothing for the per-call overhead. A
    network's weights are the sum of its layer rows' (tested), so the table can give any spec's."""
    if isinstance(item, Net):
        return network_weights(item.spec)
    if item.kind == "call":
        return 0
    _, modules, k = context_layers(item, base)
    return deployed_weights(modules[k])


def measure_interleaved(
    items: Sequence[object],
    prepare: Callable[[Any], Runner],
    backend: Backend,
    cfg: MeasureConfig,
    rng: random.Random,
) -> list[dict[str, float]]:
    """Time `items` together: warm-up, then `cfg.rounds` shuffled rounds of `cfg.runs_per_round` runs each, timed
    by the backend (bundle_measure.time_group: the same loop a device bundle's measure.py runs)."""
    runners = {k: prepare(it) for k, it in enumerate(items)}
    stats = time_group(runners, list(runners), dataclasses.asdict(cfg), rng, backend.time)
    return [stats[k] for k in runners]


def as_timed(st: dict[str, float]) -> dict[str, float]:
    """An item's statistics of one pass as they were timed, before `bundle_measure.normalize` read them against
    the sentinel (the same statistics where they were not)."""
    host = st.get("host", 1.0)
    return {**st, **{c: st[c] * host for c in ("ms", "p25_ms", "p75_ms")}, "host": 1.0}


def combine_both(passes: list[dict[str, float]], whole: bool) -> dict[str, float]:
    """`combine_passes`, with `raw_ms`: the same combination of the passes as they were timed (`as_timed`), so a
    table also records what it would hold had it not been read against the sentinel."""
    raw = combine_passes([as_timed(st) for st in passes], whole)
    return {k: v for k, v in combine_passes(passes, whole).items() if k != "host"} | {"raw_ms": raw["ms"]}


def combine_passes(passes: list[dict[str, float]], whole: bool) -> dict[str, float]:
    """One item's statistics from several passes. A whole network (or the per-call overhead) keeps its fastest
    pass, since interference only ever slows a network down; a layer row, a difference that noise moves either
    way, keeps its median pass. With one pass, that pass."""
    order = sorted(passes, key=lambda st: st["ms"])
    pick = order[0] if whole else order[(len(order) - 1) // 2]
    return {**pick, "runs": int(sum(st["runs"] for st in passes))}


def sentinel_spec(base: ArchSpec) -> ArchSpec:
    """The host gate's sentinel: `base`'s hyper-parameters, every stage 16 wide with one MB4D. Small, so it costs
    little, and threaded like every network, so a slow period of the host shows in it.

    >>> from supernet.arch import PRESETS
    >>> [(st.width, st.blocks) for st in sentinel_spec(PRESETS["l1"]).stages]
    [(16, ('4d',)), (16, ('4d',)), (16, ('4d',)), (16, ('4d',))]
    """
    return base.replace(stages=tuple(StageSpec(16, ("4d",)) for _ in base.stages)).validate()


def measure_in_passes(
    groups: list[list[Any]],
    prepare: Callable[[Any], Runner],
    backend: Backend,
    cfg: MeasureConfig,
    rng: random.Random,
    on_chunk: Callable[[list[list[Any]], dict[Any, list[dict[str, float]]]], None],
    sentinel: Runner | None = None,
) -> Gate:
    """Measure `groups` chunk by chunk; within a chunk, `cfg.passes` passes over its groups, so that the passes of
    one group are separated in time by the others. `on_chunk(groups, {item: [stats per pass]})` after each chunk.
    With a `sentinel` runner and `cfg.gate_pct > 0`, the host gate (module doc) re-measures slow passes. The loop is
    bundle_measure.measure_chunk, which a device bundle's measure.py runs too."""
    m = dataclasses.asdict(cfg)
    size, gate = max(cfg.chunk, 1), Gate(m)
    for start in range(0, len(groups), size):
        chunk = groups[start : start + size]
        runners = {item: prepare(item) for group in chunk for item in group}  # built once, reused by every pass
        done = measure_chunk(chunk, runners, m, rng, backend.time, sentinel, gate)
        per_pass: dict[Any, list[dict[str, float]]] = {}
        for (_, g), stats in sorted(done.items(), key=lambda kv: kv[0]):
            for item in chunk[g]:
                per_pass.setdefault(item, []).append(stats[item])
        on_chunk(chunk, per_pass)
    return gate


def pack(units: list[list[Any]], size: int) -> list[list[Any]]:
    """Consecutive units (lists of items that must share a group) packed into groups of at most `size` items."""
    groups, group = [], []
    for unit in units:
        if group and len(group) + len(unit) > size:
            groups.append(group)
            group = []
        group = group + unit
    return groups + ([group] if group else [])


def measure_networks(
    specs: Sequence[ArchSpec] | Sequence[Sequence[ArchSpec]],
    backend: Backend,
    cfg: MeasureConfig,
    batch: int = 1,
    seed: int = 0,
    references: Sequence[tuple[ArchSpec, float]] = (),
    progress: Any = None,  # a tqdm bar (anything with update(n)), advanced by each group's networks (not references)
    normalize: bool = False,
) -> list[dict[str, float]]:
    """Whole fused deploy networks timed in interleaved groups of `cfg.interleave` and `cfg.passes` passes, as the
    table's own items are: the one way this project measures a network (validation, calibration, `nas.slim
    --verify`, export). Pass lists of specs (units) to keep networks whose difference matters in one group.
    Results follow the input order (flattened). Timings are as measured, whatever `cfg.normalize` says: what a
    deployment benchmark would read. `normalize=True` reads them against the sentinel as a build does (re-timing a
    table's calibration networks); `raw_ms` is then the plain reading.

    With `references` (networks with their latency at build time, e.g. `LatencyTable.networks()`), every group
    also times `cfg.references` of them, cycling through the list, and each result gets `drift`: the median over
    its group's references of (now / at build). `ms / drift` then reads the network as the machine ran during the
    build, so a slow period of the host that covers one group cancels instead of deciding. `references` holds the
    group's readings of them now, as (position in `references`, ms). Without references, `drift` is 1."""
    units = [list(u) for u in specs] if specs and not isinstance(specs[0], ArchSpec) else [[s] for s in specs]
    rng = random.Random(seed)
    order = list(range(len(units)))
    rng.shuffle(order)
    # items are positions in the flattened input, then in the references (specs need not be distinct)
    offsets = np.cumsum([0] + [len(u) for u in units])
    flat = [s for u in units for s in u]
    n_refs = min(max(cfg.references, 0), len(references)) if references else 0
    size = max(cfg.interleave - n_refs, 1)
    groups = pack([list(range(offsets[k], offsets[k + 1])) for k in order], size)
    nets, then, which = list(flat), {}, {}  # each reference occurrence is an item of its own: its group's reading
    for g in groups:  # each group's references, cycling so that every reference is re-timed as often as any
        for _ in range(n_refs):
            which[len(nets)] = (len(nets) - len(flat)) % len(references)  # its position in `references`
            spec, ms = references[which[len(nets)]]
            then[len(nets)] = ms
            g.append(len(nets))
            nets.append(spec)
    results: dict[int, dict[str, float]] = {}
    drift: dict[int, float] = {}
    refs: dict[int, tuple[tuple[int, float], ...]] = {}

    def on_chunk(chunk: list[list[int]], per_pass: dict[Any, list[dict[str, float]]]) -> None:
        results.update({i: combine_both(p, whole=True) for i, p in per_pass.items()})
        for g in chunk:
            ratios = [results[i]["ms"] / then[i] for i in g if i in then]
            drift.update({i: float(np.median(ratios)) if ratios else 1.0 for i in g if i not in then})
            readings = tuple((which[i], results[i]["ms"]) for i in g if i in then)
            refs.update({i: readings for i in g if i not in then})
            if progress is not None:
                progress.update(sum(i not in then for i in g))

    prepare = lambda i: backend.prepare(*network_module(nets[i], batch))  # noqa: E731
    sentinel = backend.prepare(*network_module(sentinel_spec(flat[0]), batch)) if cfg.gate_pct > 0 and flat else None
    cfg = dataclasses.replace(cfg, normalize=normalize)
    gate = measure_in_passes(groups, prepare, backend, cfg, rng, on_chunk, sentinel)
    if gate.remeasured:
        log.info(gate.describe())
    return [{**results[i], "drift": drift[i], "references": refs[i]} for i in range(len(flat))]


def measure_alone(
    specs: Sequence[ArchSpec],
    backend: Backend,
    batch: int = 1,
    runs: int = 100,
    blocks: int = 5,
    warmup: int = 10,
    seed: int = 0,
    progress: Any = None,
) -> list[dict[str, float]]:
    """The deployment-benchmark protocol, independent of the table's: each network alone, `warmup` untimed runs,
    then `runs` back-to-back timed runs, their median. The networks are cycled `blocks` times, each time in a fresh
    shuffled order, so that drift hits all of them alike; a network's latency is the median of its block medians,
    and `spread` the (max - min) / median of those (the protocol's own noise, relative)."""
    runners = [backend.prepare(*network_module(s, batch)) for s in specs]
    rng = random.Random(seed)
    medians: list[list[float]] = [[] for _ in specs]
    order = list(range(len(specs)))
    for _ in range(blocks):
        rng.shuffle(order)
        for k in order:
            for _ in range(warmup):
                runners[k]()
            medians[k].append(float(np.median(backend.time(runners[k], runs))))
            if progress is not None:
                progress.update(1)
    out = []
    for m in medians:
        mid = float(np.median(m))
        out.append({"ms": mid, "spread": (max(m) - min(m)) / mid, "runs": runs * blocks})
    return out


def chain_difference(with_row: dict[str, float], without: dict[str, float]) -> dict[str, float]:
    """A row's statistics from its two chains: the difference of their latencies, with the longer chain's spread
    (clipped at 0: a layer cannot save time)."""
    base = without["ms"]
    return {
        "ms": max(with_row["ms"] - base, 0.0),
        "p25_ms": max(with_row["p25_ms"] - base, 0.0),
        "p75_ms": max(with_row["p75_ms"] - base, 0.0),
        "runs": with_row["runs"],
        "host": with_row.get("host", 1.0),  # both chains ran in one group pass, against one sentinel reading
    }


def plan_groups(items: Sequence[Item], cfg: MeasureConfig) -> list[list[Any]]:
    """The interleaved groups `items` are measured in, in order: shuffled with `cfg.seed`, a layer row as its two
    chains side by side in one group, packed `cfg.interleave` to a group. With V visits of the calibration
    networks, visit j falls at a random place in the j-th of V equal stretches of the plan, so the visits of one
    network are spread over the whole build. A device bundle keeps exactly these groups."""
    rng = random.Random(cfg.seed)
    visits = 1 + max((it.visit for it in items if isinstance(it, Net)), default=0)
    slot = {id(it): (it.visit + rng.random()) / visits if isinstance(it, Net) else rng.random() for it in items}
    items = sorted(items, key=lambda it: slot[id(it)])
    units = [[Chain(it, True), Chain(it, False)] if isinstance(it, Row) and it.kind != "call" else [it] for it in items]
    return pack(units, max(cfg.interleave, 2))


def results_of(measured: Sequence[Any], per_pass: dict[Any, list[dict[str, float]]]) -> list[tuple[Item, dict]]:
    """Table items from measured ones and their statistics per pass: a layer row from its two chains (the median
    pass of their difference), a network or the per-call overhead from its own passes (the fastest); with `raw_ms`,
    the same from the passes as timed (`combine_both`)."""
    done = []
    for it in measured:
        if isinstance(it, Chain):
            if it.with_row:
                diffs = [chain_difference(a, b) for a, b in zip(per_pass[it], per_pass[Chain(it.row, False)])]
                done.append((it.row, combine_both(diffs, whole=False)))
        else:
            done.append((it, combine_both(per_pass[it], whole=True)))
    return done


def measure_items(
    items: Sequence[Item],
    base: ArchSpec,
    backend: Backend,
    cfg: MeasureConfig,
    batch: int,
    on_group: Callable[[list[tuple[Item, dict[str, float]]]], None],
    progress: Any = None,  # a tqdm bar (anything with update(n))
) -> Gate:
    """Measure `items` (layer rows, `CALL`, networks) in shuffled groups and passes (`plan_groups`,
    `measure_in_passes`, with the host gate), calling `on_group` with each finished chunk's results (`results_of`)."""
    torch.manual_seed(cfg.seed)
    groups = plan_groups(items, cfg)

    def on_chunk(chunk: list[list[Any]], per_pass: dict[Any, list[dict[str, float]]]) -> None:
        done = results_of([it for group in chunk for it in group], per_pass)
        on_group(done)
        if progress is not None:
            progress.update(len(done))

    prepare = lambda it: backend.prepare(*item_module(it, base, batch))  # noqa: E731
    sentinel = backend.prepare(*network_module(sentinel_spec(base), batch)) if cfg.gate_pct > 0 and groups else None
    return measure_in_passes(groups, prepare, backend, cfg, random.Random(cfg.seed), on_chunk, sentinel)
