"""What the rows miss, learned on the device: a correction from the raw sum of rows to whole-network latency.

A table's `net` rows are whole networks measured in the same interleaved rounds as its rows. Their measured
latency against the rows' raw sum is what a correction is fitted on. Five models, from simplest to richest:

    scale   measured = s * raw                         (the median of measured / raw)
    affine  measured = a * raw + b                     (least squares on relative error)
    power   measured = a * raw ** b                    (a line in log-log: the ratio grows or shrinks with size)
    memory  measured = s * raw + m * max(W - h, 0)     (W: the network's deployed weights in millions, the sum of
                                                        its rows'; s, m >= 0 by NNLS on relative error for each knot
                                                        h among 0 and the networks' own W, the best knot kept)
    kinds   measured = call + sum_g s_g * raw_g        (one non-negative scale per row group, NNLS on relative
                                                        error; groups: conv = stem + embed, mb4d, mb3d,
                                                        glue = flat + unflat + head)

Why `memory`: a row is the difference of two short chains, whose few weights stay in the core's cache from one
run to the next; a whole network's weights may not fit, and then stream in from further away on every inference,
at a cost per weight that no row sees. On an Intel Xeon (2 MB of L2 per core) onnxruntime networks measured up to
40% above their rows' sum, and the excess followed the network's weight count (correlation 0.93 over 30 held-out
networks), not its latency: next to nothing up to about 0.1-0.2 million weights (0.4-0.8 MB), then 0.15-0.19 ms per
million more, some 25 GB/s (issue #21; benchmarks/README.md section 3). The knot h is that cache's share.

Which one a table uses is chosen by leave-one-out cross-validation over its networks (`fit_correction`): each
network is predicted by the model fitted on the others, and the model with the lowest mean |relative error| wins,
except that a richer model must beat the simpler one chosen so far by `MARGIN` (relative) and `MARGIN_ABS`, so
that a few noisy networks do not buy a model that only fits their noise. On an AMD EPYC the scale was enough
(100% of held-out networks within +-10%); on an Intel Xeon onnxruntime's measured/raw ratio ran from 1.05 to 1.92
and grew with the network's weights, which no single scale fits (issue #21). `memory` is tried only where the table
records its rows' weights (tables written before that column existed have none). The fit is a pure function of
the stored measurements, so a table imported from a device bundle refits identically.

>>> import numpy as np
>>> raw = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
>>> parts = np.column_stack([raw, np.zeros(8), np.zeros(8), np.zeros(8)])
>>> fit_correction(parts, 0.0, 1.5 * raw).name
'scale'
>>> fit_correction(parts, 0.0, 0.5 * raw**1.3).name
'power'
>>> weights = np.array([0.1, 2.0, 0.5, 3.0, 0.2, 1.0, 4.0, 0.3])  # millions, not in step with raw
>>> fit_correction(parts, 0.0, raw + 0.2 * np.maximum(weights - 0.5, 0), weights=weights).describe()
'memory correction (1.000 x raw + 0.200 ms per million weights beyond 0.500M) on 8 networks, leave-one-out error 0.2%'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

GROUPS = {"stem": "conv", "embed": "conv", "mb4d": "mb4d", "mb3d": "mb3d", "flat": "glue", "unflat": "glue"}
GROUPS["head"] = "glue"
GROUP_NAMES = ("conv", "mb4d", "mb3d", "glue")
MODELS = ("scale", "affine", "power", "memory", "kinds")  # simplest first
MARGIN = 0.10  # a richer model must cut the cross-validated error by 10% of the simpler one's to be chosen ...
MARGIN_ABS = 0.002  # ... and by at least 0.2 points: below that, networks measured this way cannot tell them apart
MIN_NETWORKS = {"scale": 3, "affine": 6, "power": 6, "memory": 8, "kinds": 10}  # fewer networks than this: not tried


@dataclass(frozen=True)
class Correction:
    """A fitted correction: `name` (one of MODELS), its parameters, and the evidence that chose it."""

    name: str
    params: tuple[float, ...]
    call: float  # the per-call overhead, priced once by every model (`kinds` keeps it unscaled)
    n: int  # networks it was fitted on
    cv_error: float  # leave-one-out mean |relative error| (0.05 = 5%); nan with too few networks
    cv_p90: float  # ... and its 90th percentile: the calibration part of `predict_interval`
    scale: float  # the median measured / raw over its networks: turns a raw difference into a predicted one
    candidates: tuple[tuple[str, float], ...] = ()  # every model tried, with its cross-validated error
    errors: tuple[float, ...] = ()  # the chosen model's leave-one-out error per network (cv_error is their mean)

    def __call__(self, parts: np.ndarray, weights: np.ndarray | float | None = None) -> np.ndarray | float:
        """Predicted ms from row-group sums (shape (..., 4), in GROUP_NAMES order, the call not included) and, for
        `memory`, the networks' deployed weights (millions)."""
        if self.name == "memory" and weights is None:
            raise ValueError("the memory correction needs the network's weights")
        return _predict(self.name, self.params, np.asarray(parts, float), self.call, weights)

    def describe(self) -> str:
        cv = f"leave-one-out error {self.cv_error * 100:.1f}%" if np.isfinite(self.cv_error) else "too few to check"
        if self.name == "scale":
            model = f"x{self.params[0]:.3f}"
        elif self.name == "affine":
            model = f"{self.params[0]:.3f} x raw {self.params[1]:+.4f} ms"
        elif self.name == "power":
            model = f"{self.params[0]:.3f} x raw^{self.params[1]:.3f}"
        elif self.name == "memory":
            s, m, h = self.params
            model = f"{s:.3f} x raw + {m:.3f} ms per million weights beyond {h:.3f}M"
        else:
            model = ", ".join(f"{g} x{s:.2f}" for g, s in zip(GROUP_NAMES, self.params))
        return f"{self.name} correction ({model}) on {self.n} networks, {cv}"


def _predict(
    name: str, params: tuple[float, ...], parts: np.ndarray, call: float, weights: np.ndarray | float | None = None
) -> np.ndarray | float:
    raw = parts.sum(axis=-1) + call
    if name == "memory":
        return params[0] * raw + params[1] * np.maximum(np.asarray(weights, float) - params[2], 0.0)
    if name == "scale":
        return params[0] * raw
    if name == "affine":
        return params[0] * raw + params[1]
    if name == "power":
        return params[0] * np.power(np.maximum(raw, 1e-12), params[1])
    return call + parts @ np.asarray(params)


def _fit(
    name: str, parts: np.ndarray, call: float, measured: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, ...]:
    raw = parts.sum(axis=1) + call
    w = 1.0 / measured  # every model minimises relative error: a 0.1 ms miss matters more on a 0.3 ms network
    if name == "scale":
        return (float(np.median(measured / raw)),)
    if name == "memory":
        return _fit_memory(raw, weights, measured)
    if name == "affine":
        a, b = np.linalg.lstsq(np.column_stack([raw, np.ones_like(raw)]) * w[:, None], measured * w, rcond=None)[0]
        return float(a), float(b)
    if name == "power":
        b, log_a = np.polyfit(np.log(raw), np.log(measured), 1)
        return float(np.exp(log_a)), float(b)
    used = parts.any(axis=0)  # a group no network uses keeps the plain scale of the others
    s, _ = nnls(parts[:, used] * w[:, None], (measured - call) * w)
    scales = np.full(parts.shape[1], np.nan)
    scales[used] = s
    scales[~used] = float(np.median(measured / raw))
    return tuple(float(x) for x in scales)


def _fit_memory(raw: np.ndarray, weights: np.ndarray, measured: np.ndarray) -> tuple[float, ...]:
    """(s, m, h) of `memory`: for each knot h among 0 and the networks' weights up to their 75th percentile (so
    that a quarter of them, at least, lie beyond it to fit m), the non-negative least squares of
    s * raw + m * max(W - h, 0) on relative error; the knot with the least squared error is kept."""
    w = 1.0 / measured  # relative error, as every model
    knots = np.unique(np.concatenate([[0.0], weights[weights <= np.percentile(weights, 75)]]))
    best = (np.inf, 0.0, 0.0, 0.0)
    for h in knots:
        coef, resid = nnls(np.column_stack([raw, np.maximum(weights - h, 0.0)]) * w[:, None], measured * w)
        if resid < best[0]:
            best = (resid, float(coef[0]), float(coef[1]), float(h))
    return best[1:]


def loo_errors(
    name: str, parts: np.ndarray, call: float, measured: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Each network's relative error when the model is fitted on all the others."""
    errs = []
    for k in range(len(measured)):
        keep = np.arange(len(measured)) != k
        params = _fit(name, parts[keep], call, measured[keep], None if weights is None else weights[keep])
        pred = _predict(name, params, parts[k], call, None if weights is None else weights[k])
        errs.append(float(pred) / measured[k] - 1)
    return np.abs(np.array(errs))


def better(rich: np.ndarray, simple: np.ndarray) -> bool:
    """Whether a richer model's leave-one-out errors beat a simpler one's: lower on average by `MARGIN`
    (relative) and `MARGIN_ABS`, and by more than twice the standard error of the paired differences (noise alone
    hands a two-parameter model a lower average on about a third of twelve-network draws; measured with 2% noise
    around one scale, 20 draws).

    >>> better(np.array([0.01, 0.01, 0.02, 0.01]), np.array([0.05, 0.06, 0.04, 0.05]))
    True
    >>> better(np.array([0.01, 0.05, 0.01, 0.05]), np.array([0.05, 0.01, 0.04, 0.02]))
    False
    """
    diff = simple - rich
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
    gain = diff.mean()
    return bool(gain > MARGIN * simple.mean() and gain > MARGIN_ABS and gain > 2 * se)


def fit_correction(
    parts: np.ndarray,
    call: float,
    measured: np.ndarray,
    models: tuple[str, ...] = MODELS,
    weights: np.ndarray | None = None,
) -> Correction:
    """The correction chosen by leave-one-out error among `models` (see the module doc), fitted on every network.
    `parts`: (networks, 4) raw row sums per group in GROUP_NAMES order, without the call; `measured`: ms;
    `weights`: each network's deployed weights in millions (None: `memory` is not tried)."""
    parts, measured = np.asarray(parts, float), np.asarray(measured, float)
    weights = None if weights is None else np.asarray(weights, float)
    n = len(measured)
    usable = [m for m in models if m != "memory" or weights is not None]
    tried = [m for m in usable if n >= MIN_NETWORKS[m]] or ["scale"]
    errors = {m: loo_errors(m, parts, call, measured, weights) for m in tried} if n >= 3 else {}
    chosen = tried[0]
    for m in tried[1:]:
        if better(errors[m], errors[chosen]):
            chosen = m
    err = errors.get(chosen, np.array([np.nan]))
    raw = parts.sum(axis=1) + call
    return Correction(
        chosen,
        _fit(chosen, parts, call, measured, weights),
        call,
        n,
        float(err.mean()),
        float(np.percentile(err, 90)),
        float(np.median(measured / raw)),
        tuple((m, float(e.mean())) for m, e in errors.items()),
        tuple(float(e) for e in errors.get(chosen, ())),
    )


def host_variation(visits: np.ndarray) -> float:
    """How much the machine's speed varied during a build, from its calibration networks' visits (an array of
    networks x visits, ms): the median over networks of (slowest - fastest visit) / median visit. 0.03 = 3%.

    >>> round(host_variation(np.array([[1.0, 1.0, 1.1], [2.0, 2.0, 2.0], [3.0, 3.3, 3.0]])), 6)
    0.1
    """
    v = np.asarray(visits, float)
    if v.ndim != 2 or v.shape[1] < 2:
        return float("nan")
    return float(np.median((v.max(axis=1) - v.min(axis=1)) / np.median(v, axis=1)))
