"""Every command the README shows must be one the code accepts, so the README cannot rot.

The set-up commands themselves are run by CI (`.ci/run` executes the README's test block); the
jobs they start are run end to end by the CLI tests. Here each `python -m ...` / `python solution.py`
invocation in the README's shell blocks is parsed by the very parser of the module it names.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def python_invocations(text: str) -> list[list[str]]:
    """Each `python ...` command of the README's bash blocks, as argv after `python`."""
    commands = []
    for block in shell_blocks(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" # ")[0].split("   #")[0]
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if len(words) > 1 and words[0] in ("python", "python3"):
                    commands.append(words[1:])
    return [c for c in commands if c[0] != "-m" or c[1] not in ("venv", "pip", "pytest")]


COMMANDS = python_invocations(README)


def parser_for(module: str, args=()):
    if module == "keras_glacier.predict" and any(a.split("=")[0] == "--scene" for a in args):
        from keras_glacier.scenes.cli import build_parser  # predict's whole-scene mode has its own flags
    elif module == "keras_glacier.train":
        from keras_glacier.train import build_parser
    elif module == "keras_glacier.predict":
        from keras_glacier.predict import build_parser
    elif module == "keras_glacier.evaluate":
        from keras_glacier.evaluate import build_parser
    elif module == "convert":
        from convert.__main__ import build_parser
    else:
        return None
    return build_parser()


def test_readme_opens_with_the_two_set_up_commands():
    blocks = shell_blocks(README)
    train_block, test_block = blocks[0].strip(), blocks[1].strip()
    assert "<!-- ci:train -->" in README and "<!-- ci:test -->" in README
    assert README.index("<!-- ci:train -->") < README.index(train_block)
    assert "pip install torch==2.13.0 -e ." in train_block and "python -m keras_glacier.train" in train_block
    assert 'pip install torch==2.13.0 -e ".[test]"' in test_block and "python -m pytest" in test_block
    ci = (REPO / ".ci" / "run").read_text()
    assert "<!-- ci:test -->" in ci, ".ci/run must run the README's own test command"


def test_readme_shows_every_entry_point():
    modules = {c[1] for c in COMMANDS if c[0] == "-m"}
    assert {"keras_glacier.train", "keras_glacier.predict", "keras_glacier.evaluate", "convert",
            "benchmarks"} <= modules
    assert any(c[0] == "solution.py" for c in COMMANDS)


@pytest.mark.parametrize("argv", [c for c in COMMANDS if c[0] == "-m" and c[1] != "benchmarks"],
                         ids=lambda c: " ".join(c)[:60])
def test_module_command_parses(argv):
    parser = parser_for(argv[1], argv[2:])
    assert parser is not None, f"README runs python -m {argv[1]}, which has no known parser"
    args = argv[2:]
    if args == ["--help"]:
        assert parser.format_help()
        return
    parser.parse_args(args)  # argparse exits (SystemExit) on an unknown or malformed flag


def test_benchmark_commands_use_existing_flags():
    help_text = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=300).stdout
    for argv in (c for c in COMMANDS if c[:2] == ["-m", "benchmarks"]):
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert flag in help_text, f"README uses python -m benchmarks {flag}, which it does not accept"


def test_solution_command_uses_the_template_flags():
    tree = ast.parse((REPO / "solution.py").read_text())
    flags = {node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
             and node.args and isinstance(node.args[0], ast.Constant)}
    for argv in (c for c in COMMANDS if c[0] == "solution.py"):
        used = {a for a in argv[1:] if a.startswith("--")}
        assert used <= flags and {"--data", "--masks", "--out"} <= used
