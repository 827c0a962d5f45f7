"""Folder checks shared by the benchmark readers: one clear error for a missing or incomplete layout."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmembed.errors import MMEmbedError


class BenchmarkLayoutError(MMEmbedError, FileNotFoundError):
    """A benchmark folder or file is missing or incomplete; the message names the path and the expected layout."""

    def __init__(self, benchmark: str, path: str | Path, expected: str, missing: Iterable[str | Path] = ()):
        missing = [str(m) for m in missing]
        lines = [f"{benchmark}: missing or incomplete benchmark data at {path}"]
        if missing:
            shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            lines.append(f"  missing: {shown}")
        lines.append("  expected layout:")
        lines.extend("    " + line for line in expected.strip("\n").splitlines())
        lines.append("  (set MMEMBED_DATA or the benchmark's path setting to a folder in this layout)")
        super().__init__("\n".join(lines))
        self.benchmark = benchmark
        self.path = Path(path)
        self.missing = missing


def require(benchmark: str, root: str | Path, relative: Iterable[str], expected: str) -> Path:
    """Check that `root` exists and holds every path in `relative`; raise one `BenchmarkLayoutError` otherwise."""
    root = Path(root)
    if not root.exists():
        raise BenchmarkLayoutError(benchmark, root, expected, [root])
    missing = [rel for rel in relative if not (root / rel).exists()]
    if missing:
        raise BenchmarkLayoutError(benchmark, root, expected, missing)
    return root
