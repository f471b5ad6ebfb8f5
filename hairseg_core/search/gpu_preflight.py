"""The sweep's GPU checks and cost estimate before Tune starts, printed the way the command prints.

Why a module of its own: the checks (``hairseg_core.search.gpu_plan``) and the estimate
(``hairseg_core.search.cost_estimate``) are data in, verdict out; this decides what the command prints and
which exit status it returns. The cluster comes in as a :class:`~hairseg_core.search.gpu_plan.ClusterView`
that the entry point read from Ray (or, for a local Ray not started yet, :func:`this_machine`), so nothing
here touches Ray.
"""

from __future__ import annotations

import sys
from typing import Any

from hairseg_core.search.cost_estimate import count_images, estimate_cost
from hairseg_core.search.gpu_plan import ClusterView, PlacementError, check_gpu_memory, check_placement, this_machine

__all__ = ["check_cluster", "this_machine"]


def check_cluster(sweep: Any, cluster: ClusterView, estimate: bool = True) -> int | None:
    """Placement, GPU memory guard and (``estimate``) the cost estimate of a ``PreparedSweep``.

    Returns 2 after printing one line when the sweep could never run as asked, else None; with ``estimate``
    the estimate is printed and kept on ``sweep.plan`` (the sweep logs it on its MLflow run).
    """
    try:
        warnings = check_placement(sweep.space, cluster, sweep.space_file)
    except PlacementError as exc:
        print(exc, file=sys.stderr)
        return 2
    memory = check_gpu_memory(sweep.space, cluster, sweep.space_file)
    if memory.error:
        print(memory.error, file=sys.stderr)
        return 2
    if not estimate:  # a first look before Ray starts: its notes would repeat after Ray's
        return None
    for line in warnings + memory.notes:
        print(line, file=sys.stderr)
    sweep.plan = estimate_cost(sweep.space, cluster, count_images(sweep.space))
    print("\n".join(sweep.plan.lines()))
    return None
