"""results.md: the numbers of one evaluation run with the protocol that produced them."""

from __future__ import annotations

import json

# The rule of metrics/ranking.py (rank = candidates scoring strictly above the best positive) and of
# metrics/mmeb.py (hit = gold >= every candidate), stated so a reader of the numbers need not read the code.
TIES = ("- ties: a candidate scoring exactly as high as the query's best positive does not rank above it "
        "(retrieval, CIR, zero-shot); MMEB counts a tie with the gold as a hit (its argmax takes the first "
        "maximum, the gold at index 0)")


def _code(text: str | None) -> str:
    if text is None:
        return "(none: the model takes raw text)"
    return "`" + json.dumps(text)[1:-1] + "`"  # escapes newlines so the exact string stays on one line


def _prompts(prompts: dict, indent: str = "") -> list[str]:
    lines = []
    for kind, rec in prompts.items():
        if "template" in rec:
            template, rendered = _code(rec["template"]), _code(rec["rendered_example"])
            lines.append(f"{indent}- `{kind}` template {template}; rendered: {rendered}")
        else:
            lines.append(f"{indent}- {kind}:")
            lines.extend(_prompts(rec, indent + "  "))
    return lines


def results_markdown(results: dict) -> str:
    lines = [
        "# Evaluation results",
        "",
        f"- model: `{results.get('model')}`",
        f"- adapter: `{results.get('adapter')}`",
        f"- started: {results.get('started')}; wall time {results.get('wall_time_s', '?')} s; "
        f"batch size {results.get('batch_size')}",
        TIES,
        "",
    ]
    for name, entry in results.get("benchmarks", {}).items():
        metrics, protocol = entry["metrics"], dict(entry["protocol"])
        lines += [f"## {name} ({protocol.get('task')}, {entry.get('wall_time_s')} s)", ""]
        lines += ["| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics)]
        lines += ["| " + " | ".join(f"{v:.2f}" for v in metrics.values()) + " |"]
        chance = protocol.pop("chance", None)
        if chance:
            lines += ["| " + " | ".join(f"chance {chance[k]:.2f}" if k in chance else "" for k in metrics) + " |"]
        prompts = protocol.pop("prompts", {})
        lines += ["", "Protocol:", ""]
        for key, value in protocol.items():
            lines.append(f"- {key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
        lines += ["- prompts:"] + _prompts(prompts, "  ") + [""]
    return "\n".join(lines) + "\n"
