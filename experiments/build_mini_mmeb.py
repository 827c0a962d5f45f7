"""Build the local mini-MMEB (MMEB-format eval + train files) from the shared data; prints the counts.

    python experiments/build_mini_mmeb.py                      # -> $MMEMBED_CACHE or ~/.cache/mmembed, /mini_mmeb-v1
    python experiments/build_mini_mmeb.py --limit 8 --out /tmp/mini   # a small subset
    python src/eval.py eval=mini_mmeb                           # evaluate on it

What each dataset is and how it was built: the README.md written into the output folder
(mmembed.prep.mini_mmeb.build).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO / "src"))  # a checkout without `pip install -e .`
    from mmembed.errors import MMEmbedError
    from mmembed.prep.mini_mmeb.build import VERSION, build_mini_mmeb

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("MMEMBED_DATA", str(REPO.parent / "shared" / "data")))
    cache = os.environ.get("MMEMBED_CACHE", str(Path.home() / ".cache" / "mmembed"))  # conf/paths' cache_dir
    parser.add_argument("--out", default=str(Path(cache) / VERSION))
    parser.add_argument("--limit", type=int, default=None, help="at most N source images per dataset (a subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing build in --out")
    args = parser.parse_args(argv)
    try:
        counts = build_mini_mmeb(args.data_root, args.out, limit=args.limit, seed=args.seed, force=args.force)
    except MMEmbedError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: counts[k] for k in ("eval", "train", "heldout_dropped", "crops_written", "disjoint",
                                             "build_seconds", "out")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
