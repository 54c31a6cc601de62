"""The README's commands run as written, its links resolve, and docs/cli.md is the real ``--help``.

Every shell command of a ```bash block in README.md runs, as written and in README order, from a
directory that holds what a clone holds (``examples/``, ``benchmarks/``): a few cheap ones in the
default test run, all with ``-m slow``. Only a rule in ``RULES`` keeps a command from running, and
it says why (the network, GPUs, the test suite itself). So a new README command that does not work
fails the slow tests until it works. The Python blocks run in the default test run.

    python tests/test_readme.py        # rewrite docs/cli.md from the current --help outputs
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CLI_MD = REPO / "docs" / "cli.md"

FAST, SLOW, SKIP = "fast", "slow", "skip"
#: (pattern searched in one command, how it is tested, why). The first match wins; no match: SLOW.
RULES: list[tuple[str, str, str]] = [
    (r"^pip install", SKIP, "installs from the package index: the network"),
    (r"python -m pytest", SKIP, "the test suite itself"),
    (r"^(accelerate launch|torchrun)", SKIP, "several GPUs"),
    (r"imagenet-1k|--pretrained\b", SKIP, "downloads from the Hugging Face Hub"),
    # the default run: the recipes, a conversion with local weights, and a report of its sizes
    (r"^adnify recipes$", FAST, "cheap"),
    (r"^adnify convert \S+ -c pkg:", FAST, "cheap"),
    (r"^adnify report \S+ --metrics params,macs$", FAST, "cheap"),
]


# -- reading the README --------------------------------------------------------------------------

def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a Markdown text, in order."""
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.M | re.S)]


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list[str]:
    """Each command of the ```bash blocks (continuation lines joined, comments dropped, ``&&`` split)."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = _strip_comment(line)
            commands += [part.strip() for part in line.split(" && ") if part.strip()]
    return commands


def classify(command: str) -> tuple[str, str]:
    """How a README command is tested: (FAST | SLOW | SKIP, why)."""
    for pattern, tier, why in RULES:
        if re.search(pattern, command):
            return tier, why
    return SLOW, "runs with -m slow"


def run_commands(commands: list[str], cwd: Path) -> None:
    """Run each command with bash in ``cwd``, as a user would type it after ``pip install``."""
    for name in ("examples", "benchmarks", "recipes"):  # what a clone has beside the README
        (cwd / name).symlink_to(REPO / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "120"}
    env.pop("ADNIFY_DEBUG", None)
    for command in commands:
        done = subprocess.run(["bash", "-c", f"set -eo pipefail; {command}"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


# -- the README ----------------------------------------------------------------------------------

def test_the_readme_starts_with_the_main_job_and_the_test_command():
    text = README.read_text()
    first = fenced_blocks(text, "bash")[0].strip().splitlines()
    assert first == ['pip install ".[demo]" && adnify demo', 'pip install -e ".[dev]" && python -m pytest -q']
    assert text.index(first[0]) < text.index("\n## ")  # before the first section
    test_command = first[1].split(" && ")[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test_command)}$", ci, re.M), f".ci/run must run {test_command!r}"
    ci_install = 'pip install --quiet --disable-pip-version-check -e ".[dev]"'
    assert ci_install in ci


def test_the_readme_is_short_and_names_no_path_a_user_lacks():
    text = README.read_text()
    assert len(text.splitlines()) <= 140
    for lacking in ("../shared", "/work/", "shared/data"):
        assert lacking not in text


def test_every_readme_command_is_run_or_says_why_not():
    commands = shell_commands(README.read_text())
    assert commands, "no ```bash blocks found"
    tiers = [classify(c)[0] for c in commands]
    assert "adnify demo" in commands
    assert tiers.count(FAST) >= 3, "the default test run checks a few README commands at least"
    assert tiers.count(SKIP) <= 6, "most README commands run in a test"


def test_the_cheap_readme_commands_run_as_written(tmp_path):
    run_commands([c for c in shell_commands(README.read_text()) if classify(c)[0] == FAST], tmp_path)


@pytest.mark.slow
def test_every_readme_command_that_needs_no_network_runs_as_written(tmp_path):
    run_commands([c for c in shell_commands(README.read_text()) if classify(c)[0] != SKIP], tmp_path)


def test_the_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in fenced_blocks(README.read_text(), "python"):
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # links, not code
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    for link in _links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        assert file.exists(), f"{page.relative_to(REPO)} links to {link}, which does not exist"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{page.relative_to(REPO)} links to {link}: no such heading"


def test_the_benchmarks_readme_lists_every_script():
    listed = (REPO / "benchmarks" / "README.md").read_text()
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        assert f"`{script.name}`" in listed, f"benchmarks/README.md does not list {script.name}"


def test_docs_architecture_md_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "adnify"
    for module in sorted(package.rglob("*.py")):
        if module.name == "__init__.py" and module.parent != package:
            continue  # a sub-package is its heading
        assert f"`{module.name}`" in text, f"docs/architecture.md does not say what {module.relative_to(REPO)} holds"
    for sub in sorted(p.parent.name for p in package.glob("*/__init__.py")):
        assert f"`{sub}/`" in text, f"docs/architecture.md does not describe adnify/{sub}/"


# -- docs/cli.md ---------------------------------------------------------------------------------

def _help(args: list[str]) -> str:
    from typer.testing import CliRunner

    from adnify.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250",
                                                              "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|")


def _render_help(command: str, text: str) -> list[str]:
    """One command's ``--help`` as Markdown: usage, description, examples, a table per panel."""
    out: list[str] = []
    rows: list[list[str]] = []
    paragraph: list[str] = []
    code: list[str] = []

    def flush(code_too: bool = True) -> None:
        if paragraph:
            out.extend([" ".join(paragraph), ""])
            paragraph.clear()
        if code and code_too:
            out.extend(["```", *code, "```", ""])
            code.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        body = line.strip()
        if body.startswith("Usage:"):
            out.extend([f"`{body.removeprefix('Usage: ')}`", ""])
        elif body.startswith("╭"):
            flush()
            title = body.strip("╭─╮ ")
            out.extend([f"**{title}**", ""])
            rows = []
        elif body.startswith("╰"):
            if not rows:  # a panel with --help alone
                del out[-2:]
                continue
            out.extend(["| name | value | meaning |", "| --- | --- | --- |"] if command else
                       ["| command | what it does |", "| --- | --- |"])
            out.extend(f"| {' | '.join(r)} |" for r in rows)
            out.append("")
        elif body.startswith("│"):
            cells = body.strip("│").strip()
            if command:
                m = re.match(r"^(\*)?\s*(--[\w-]+|[\w-]+)\s+(?:(-\w)\s+)?(<[^>]+>)\s+(.*)$", cells)
                if m and m.group(2) != "--help":
                    name = f"`{m.group(2)}`" + (f", `{m.group(3)}`" if m.group(3) else "")
                    value = m.group(4).strip("<>")
                    rows.append([name, "flag" if value == "bool" else _cell(value), _cell(m.group(5))])
                elif not m and rows:
                    rows[-1][2] += " " + _cell(cells)
            else:
                m = re.match(r"^([a-z][\w-]*)\s{2,}(.*)$", cells)
                if m:
                    rows.append([f"[`{m.group(1)}`](#adnify-{m.group(1)})", _cell(m.group(2))])
                elif rows:
                    rows[-1][1] += " " + _cell(cells)
        elif not body:
            flush(code_too=False)  # examples separated by blank lines stay one block
        elif body.startswith(("adnify ", "accelerate ", "torchrun ")):
            flush(code_too=False)
            code.append(body)
        elif body in ("Examples:", "Example:"):
            flush()
            out.extend([body, ""])
        else:
            if code:
                flush()
            paragraph.append(body)
    flush()
    return out


def cli_reference() -> str:
    """docs/cli.md: every command and option, from the ``--help`` of the installed adnify."""
    top = _help([])
    commands = re.findall(r"^│ ([a-z][\w-]*)\s{2,}", top.split("Commands", 1)[1], re.M)
    lines = [
        "# Command line reference",
        "",
        "<!-- Generated from the --help of every command by `python tests/test_readme.py`; do not edit by hand:",
        "     tests/test_readme.py fails when this file differs from the installed adnify's --help. -->",
        "",
        "Each command also runs as `python -m adnify COMMAND`. Errors in what you pass print one line on",
        "stderr and exit with status 1 (`ADNIFY_DEBUG=1` shows the traceback).",
        "",
        "Two options share a name with different meanings: in `convert` and `train`, `--split` is the",
        "stage split (each stage's mandatory part); in `report`, `--split` is the data split to evaluate,",
        "and the stage split is `--plan-split`. `train` names its data split `--eval-split`.",
        "",
        "## adnify",
        "",
        *_render_help("", top),
    ]
    for name in commands:
        lines += [f"## adnify {name}", "", *_render_help(name, _help([name]))]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def test_docs_cli_md_is_the_current_help():
    assert CLI_MD.read_text() == cli_reference(), "docs/cli.md is stale: run python tests/test_readme.py"


def test_docs_cli_md_names_every_option_of_every_command():
    text = CLI_MD.read_text()
    commands = re.findall(r"^## adnify (\w+)", text, re.M)
    assert {"convert", "train", "report", "export", "demo", "recipes", "info", "models"} <= set(commands)
    for name in commands:
        section = text.split(f"## adnify {name}\n", 1)[1].split("\n## ", 1)[0]
        for option in set(re.findall(r"(?<![\w-])--[a-z][\w-]*", _help([name]))) - {"--help"}:
            assert f"`{option}`" in section, f"docs/cli.md does not document adnify {name} {option}"


if __name__ == "__main__":
    CLI_MD.write_text(cli_reference())
    print(f"wrote {CLI_MD.relative_to(REPO)}")
