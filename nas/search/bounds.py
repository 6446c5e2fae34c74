"""The fastest network a search space reaches on a LUT: the floor under every reachable target."""

from __future__ import annotations

from latency_lut.measure import space_rows, width_options
from latency_lut.table import LatencyTable, spec_rows
from supernet.arch import ArchSpec
from supernet.space import Choices
from supernet.supernet import SuperNet


def min_latency(net: SuperNet, table: LatencyTable, step: int) -> tuple[float, ArchSpec]:
    """The smallest predicted latency in the space, exactly. Every row costs >= 0, so the minimum has one block;
    for each placement of it, the widths are chosen by dynamic programming: a network's rows split by stage,
    and stage k's rows depend only on its width and stage k-1's (through its embedding). Rows need not fall
    with width (measurements are not monotone), so the narrowest widths are not assumed to be the fastest."""
    opts = [width_options(w, step) for w in net.space.widths]
    cost = {r.key: table.raw_row(r) for r in space_rows(net.space, net.num_classes, step)}
    best: tuple[float, ArchSpec] | None = None
    for i in range(4):
        for code in (c for c in net.stage_choices[i] if c != "id"):
            choices = tuple(
                tuple(code if (k == i and j == 0) else "id" for j in range(d)) for k, d in enumerate(net.space.depths)
            )

            def stage_cost(k: int, prev: int, w: int, choices: Choices = choices) -> float:
                widths = [opts[0][0]] * 4
                widths[max(k - 1, 0)], widths[k] = prev, w
                return sum(cost[r.key] for r in spec_rows(net.spec_of(choices, tuple(widths))) if r.stage == k)

            # paths[w] = (cost so far, widths so far) for the cheapest prefix ending at width w
            paths = {w: (stage_cost(0, w, w), (w,)) for w in opts[0]}
            for k in range(1, 4):
                paths = {w: min((c + stage_cost(k, p, w), ws + (w,)) for p, (c, ws) in paths.items()) for w in opts[k]}
            _, widths = min(paths.values())
            spec = net.spec_of(choices, widths)
            lat = table.predict(spec)
            if best is None or lat < best[0]:
                best = (lat, spec)
    assert best is not None
    return best
