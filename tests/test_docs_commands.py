"""Every shell command written in README.md, docs/*.md and experiments/README.md runs, cheaply.

Collected: each line of a fenced ```bash block (backslash continuations joined, `#` comments dropped) and each
inline command in backticks that starts with `python src/`, `python -m mmembed`, `python perf/`,
`python experiments/` or `make `. How each is checked, without running any real work:
- Hydra entry points (src/train.py, eval.py, embed.py, caption.py): the config is composed in-process with
  hydra.compose (what `--cfg job` prints) and resolved; a multirun (`-m`) composes each value of every sweep,
  those on the command line and those of the config's grid (`hydra.sweeper.params`, e.g. `ablation=...`);
- argparse scripts (src/search.py, src/export.py, perf/*.py, experiments/*.py, `python -m mmembed...`): run with
  `--help` once per script, and every `--flag` the command uses must appear in that help;
- make targets: `make -n` (prints the recipe, runs nothing); the src/, experiments/ and perf/ script lines it
  prints are checked as above, with the ARGS the command passes.
Explicit rules, not silent skips:
- placeholders `<...>` (a run folder, a time stamp) and `...` (the rest of a command) stand for user values: each
  `<...>` becomes the string PLACEHOLDER, a bare `...` token is dropped, `key=...` gets PLACEHOLDER as its value;
- launchers (`VAR=value` prefixes, `srun`, `torchrun <its options>`) are removed and what they launch is checked;
- NOT_CHECKED names the programs that are not this project's (tensorboard, pip, ...) and NO_HELP the scripts that
  take no arguments (they would run their work): for those only the file's existence is checked.
Also: every relative link of those files reaches an existing file and, with `#anchor`, one of its headings.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "README.md"]
HYDRA_ENTRY_POINTS = {"src/train.py": "train", "src/eval.py": "eval", "src/embed.py": "embed", "src/caption.py": "caption"}
NOT_CHECKED = {"tensorboard": "TensorBoard's own CLI", "pip": "the package installer", "cd": "a shell builtin"}
NO_HELP = {"perf/equivalence_tolerances.py": "takes no arguments: `--help` would run its ~20 s of checks"}
PLACEHOLDER = "PLACEHOLDER"
INLINE = re.compile(r"`((?:python (?:src/|-m mmembed|perf/|experiments/)|make )[^`]*)`")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class DocCommand:
    where: str  # doc file:line, relative to the repository
    text: str  # the command as written (continuations joined)

    @property
    def argv(self) -> list[str]:
        text = re.sub(r"<[^<>]*>", PLACEHOLDER, self.text)  # <time>, <run folder>, <time of: ...>
        words = []
        for word in shlex.split(text, comments=True):
            if word == "...":
                continue
            words.append(re.sub(r"=\.\.\.$", "=" + PLACEHOLDER, word))
        return strip_launchers(words)


def strip_launchers(words: list[str]) -> list[str]:
    """The program a doc line starts, without env assignments, srun or torchrun and its options."""
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if words[:1] == ["srun"]:
        words = words[1:]
    if words[:1] == ["torchrun"]:
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        words = ["python", *words[script:]]
    return words


def commands_in(text: str, name: str) -> list[DocCommand]:
    """The commands of one markdown file: fenced bash lines and inline backticked commands."""
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line.strip())
        if opened and fence is None:
            fence = opened.group(1) or "text"
            continue
        if line.strip() == "```" and fence is not None:
            fence = None
            continue
        if fence == "bash":
            stripped = line.strip()
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            command, pending = (pending + stripped).strip(), ""
            if command and not command.startswith("#"):
                found.append(DocCommand(f"{name}:{start}", command))
        elif fence is None:
            found += [DocCommand(f"{name}:{number}", m.group(1).strip()) for m in INLINE.finditer(line)]
    return found


def all_commands() -> list[DocCommand]:
    return [c for path in DOC_FILES for c in commands_in(path.read_text(), str(path.relative_to(REPO)))]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}


def help_target(argv: list[str]) -> tuple[str, ...] | None:
    """What `--help` is run on for an argparse command (`python X.py ...`, `python -m mod ...`), else None."""
    if argv[:1] != ["python"] or len(argv) < 2 or argv[1] in HYDRA_ENTRY_POINTS or argv[1] in NO_HELP:
        return None
    return ("-m", argv[2]) if argv[1] == "-m" else (argv[1],)


def run_help(target: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *target, "--help"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=180)


HELP_RUNS: dict[tuple[str, ...], Future] = {}


@pytest.fixture(scope="module")
def help_runs_in_background():
    """Each script's `--help` (some import torch: seconds each) runs in 4 background processes while the
    configs compose in this one."""
    targets = {t for c in COMMANDS if (t := help_target(c.argv))}
    with ThreadPoolExecutor(max_workers=4) as pool:
        HELP_RUNS.update({t: pool.submit(run_help, t) for t in sorted(targets)})
        yield
    HELP_RUNS.clear()


@cache
def help_text(target: tuple[str, ...]) -> str:
    run = HELP_RUNS[target].result() if target in HELP_RUNS else run_help(target)
    assert run.returncode == 0 and "usage" in run.stdout, f"`{' '.join(target)} --help` failed:\n{run.stderr[-2000:]}"
    return run.stdout


@cache
def compose_checked(config_name: str, overrides: tuple[str, ...]) -> object:
    """Compose (and resolve) one config; raises with Hydra's message when it does not compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from mmembed.hardware import register_resolvers

    register_resolvers()  # what `import mmembed` does for the entry points: ${mmembed_cpu_precision:}, ...
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    hydra_node = cfg.hydra
    HydraConfig.instance().set_config(cfg)  # for ${hydra:runtime.output_dir}
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation (paths, ${oc.env:...}) resolves
    finally:
        HydraConfig.instance().cfg = None  # run/config.py asks HydraConfig.initialized(): leave no trace
    return hydra_node


def sweep_values(override: str) -> list[str]:
    """`key=a,b` -> [`key=a`, `key=b`]; a plain override stays as it is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parsed = OverridesParser.create().parse_overrides([override])[0]
    if not parsed.is_sweep_override():
        return [override]
    prefix = override.split("=", 1)[0]
    if isinstance(parsed.value(), IntervalSweep):  # a search's range (hparams_search=...): its two ends
        return [f"{prefix}={parsed.value().start}", f"{prefix}={parsed.value().end}"]
    return [f"{prefix}={value}" for value in parsed.sweep_string_iterator()]


HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                     "--config-dir", "-cd"}


def check_hydra(config_name: str, args: list[str]) -> None:
    """Compose the command's config; a multirun composes each value of each sweep with the others' first values."""
    overrides, multirun, words = [], False, iter(args)
    for word in words:
        if word in HYDRA_VALUE_FLAGS:  # Hydra's own options (`--cfg job`, `--config-name X`): not overrides
            value = next(words)
            config_name = value if word in ("--config-name", "-cn") else config_name
        elif word.startswith("-"):
            multirun = multirun or word in ("-m", "--multirun")
        else:
            overrides.append(word)
    if not multirun:
        compose_checked(config_name, tuple(overrides))
        return
    sweeps = {o.split("=", 1)[0]: sweep_values(o) for o in overrides}
    hydra_node = compose_checked(config_name, tuple(values[0] for values in sweeps.values()))
    for key, value in (hydra_node.get("sweeper", {}).get("params") or {}).items():  # an ablation's grid
        sweeps.setdefault(str(key), sweep_values(f"{key}={value}"))
    firsts = {key: values[0] for key, values in sweeps.items()}
    for key, values in sweeps.items():
        for value in values[1:] if len(values) > 1 else values:
            compose_checked(config_name, tuple({**firsts, key: value}.values()))


def check_argparse(target: tuple[str, ...], args: list[str]) -> None:
    script = target[-1]
    if script in NO_HELP:
        assert (REPO / script).is_file(), f"{script} does not exist"
        return
    text = help_text(target)
    args = args[: args.index("--")] if "--" in args else args  # after `--`: the script's Hydra overrides
    for flag in [a.split("=", 1)[0] for a in args if a.startswith("--")]:
        assert flag in text, f"{flag} is not an option of {script} (see `{' '.join(target)} --help`)"


def check_make(args: list[str]) -> None:
    run = subprocess.run(["make", "-n", *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"`make -n {' '.join(args)}` failed:\n{run.stderr[-2000:]}"
    # the recipe's own python lines (`-m` ones are setup plumbing: assembly); a stale .venv stamp makes `make -n`
    # print the install recipe too, whose lines continue with a backslash: join them first
    for line in run.stdout.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if len(words) > 1 and words[0].endswith("/python") and words[1].startswith(("src/", "experiments/", "perf/")):
            check(["python", *words[1:]])


def check(argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    if program in NOT_CHECKED:
        return
    if program == "make":
        return check_make(args)
    if program == "bash":
        run = subprocess.run(["bash", "-n", args[0]], cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return
    assert program == "python", f"unknown program {program!r}: add a rule for it to tests/test_docs_commands.py"
    if args[0] == "-m":
        return check_argparse(("-m", args[1]), args[2:])
    if args[0] in HYDRA_ENTRY_POINTS:
        return check_hydra(HYDRA_ENTRY_POINTS[args[0]], args[1:])
    assert (REPO / args[0]).is_file(), f"{args[0]} does not exist"
    check_argparse((args[0],), args[1:])


COMMANDS = all_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_runs(command: DocCommand, help_runs_in_background):
    try:
        check(command.argv)
    except Exception as err:  # one message naming the doc line and the command, whatever failed
        pytest.fail(f"{command.where}: `{command.text}`\n{type(err).__name__}: {err}", pytrace=False)


def test_the_collector_reads_fences_continuations_comments_and_placeholders():
    text = ("Run `make train` or `python -m mmembed.prep.teacher_cache --files F`, not `ls`.\n"
            "```bash\n# a comment line\nMMEMBED_DATA=/d torchrun --nnodes=2 \\\n  src/train.py a=1   # note\n"
            "python src/eval.py adapter=<run>/adapters/last out=... ...\n```\n```python\nx = 1\n```\n")
    commands = commands_in(text, "doc.md")
    assert [(c.where, c.argv) for c in commands] == [
        ("doc.md:1", ["make", "train"]),
        ("doc.md:1", ["python", "-m", "mmembed.prep.teacher_cache", "--files", "F"]),
        ("doc.md:4", ["python", "src/train.py", "a=1"]),
        ("doc.md:6", ["python", "src/eval.py", "adapter=PLACEHOLDER/adapters/last", "out=PLACEHOLDER"]),
    ]


def test_the_readme_front_door_commands_are_collected():
    readme = {c.text for c in COMMANDS if c.where.startswith("README.md:")}
    assert {"make train", "make test"} <= {t.split("#")[0].strip() for t in readme}


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        fenced = fenced != line.startswith("```")
        if not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOC_FILES, ids=[str(p.relative_to(REPO)) for p in DOC_FILES])
def test_relative_links_reach_a_file_and_heading(doc: Path):
    broken = []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):  # http(s):, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)}:{number}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
                broken.append(f"{doc.relative_to(REPO)}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
