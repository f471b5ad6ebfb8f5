"""Speed of the paired bootstrap behind the promotion decision (``hairseg_core.final.bootstrap``).

Times one full decision as the final stage makes it: draw the ``[R, N]`` resample counts, score
both models' per-image confusion and boundary counts on every resample, take the percentile
interval of the difference. Also times Table 5's four per-variant intervals on the same draws.
Per-image counts are random but realistic (a 250x250 image, ~20 % hair, ~90 % of it found):
the cost depends only on N and R, not on the values.

    .venv/bin/python benchmarks/bootstrap.py --images 200 --resamples 2000 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from hairseg_core.final.bootstrap import PerImageCounts, bootstrap_weights, metric_interval, paired_bootstrap


def fake_counts(n: int, seed: int, pixels: int = 250 * 250) -> PerImageCounts:
    """Per-image binary confusion + boundary counts of a decent hair model."""
    rng = np.random.default_rng(seed)
    counts = PerImageCounts()
    for _ in range(n):
        hair = int(rng.integers(pixels // 10, pixels // 4))
        fn, fp = int(hair * rng.uniform(0.03, 0.15)), int(hair * rng.uniform(0.02, 0.1))
        counts.confusion.append(np.array([[pixels - hair - fp, fp], [fn, hair - fn]], np.int64))
        edge = int(rng.integers(300, 900))
        counts.boundary.append((int(edge * 0.7), edge, int(edge * 0.65), edge))
        counts.names.append("")
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    new, champion = fake_counts(args.images, 1), fake_counts(args.images, 2)
    variants = {name: fake_counts(args.images, 3 + i) for i, name in enumerate(("baseline", "crf", "matting", "cm"))}

    def decision() -> None:
        paired_bootstrap(new, champion, "miou", resamples=args.resamples, seed=0)

    def table5() -> None:
        weights = bootstrap_weights(args.images, args.resamples, 0)
        for counts in variants.values():
            metric_interval(counts, weights, "miou")

    def decision_boundary_f() -> None:
        paired_bootstrap(new, champion, "boundary_f", resamples=args.resamples, seed=0)

    print(
        f"{args.images} images x {args.resamples} resamples, {args.repeats} repeats; {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} logical cores, numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'step':<42} {'median ms':>10} {'p90 ms':>10}")
    for name, fn in (
        ("paired decision (mIoU)", decision),
        ("paired decision (boundary F)", decision_boundary_f),
        ("Table 5: 4 variants' mIoU intervals", table5),
    ):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(1000.0 * (time.perf_counter() - start))
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]
        print(f"{name:<42} {statistics.median(times):>10.2f} {p90:>10.2f}")


if __name__ == "__main__":
    main()
