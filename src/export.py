"""`python src/export.py --help`: see docs/inference.md (argparse; the code is mmembed.inference.cli)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from mmembed.inference.cli import main

    sys.exit(main("export"))
