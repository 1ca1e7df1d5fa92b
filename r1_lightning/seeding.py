"""One seed per run: `seed_everything`'s, unless an option sets a seed of its own.

The modules' sampling seed and the data modules' shuffle seed are explicit (a resumed run must draw
exactly what the straight run drew, whatever else consumed the global generators), so
`seed_everything` alone would not reach them: runs that differ only in `--seed_everything` would
sample the same rollouts from the same data order. Left unset, they take its seed instead.
"""

from __future__ import annotations

import os


def seed_or_global(seed: int | None) -> int:
    """`seed`, or where it is None the seed of Lightning's `seed_everything` (LightningCLI's
    `seed_everything:`, which sets it before building the module and data module; read from
    `PL_GLOBAL_SEED`), or 0 when nothing was seeded."""
    if seed is not None:
        return seed
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))
