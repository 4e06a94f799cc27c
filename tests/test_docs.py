"""The documentation stays true: every ``bertft`` command in a ``bash`` block of README.md and docs/ still parses.

Each command runs through the real entry point with ``--print_config`` (``fit``, ``validate``, ``test``, ``predict``),
which parses every option and config file and stops before anything is built, so a renamed or removed option fails
here. ``export`` and ``serve`` commands are parsed by their own parsers. Placeholders are filled in the way a reader
would: ``N`` and ``M`` devices and nodes become numbers, ``[--flag]`` becomes ``--flag``, and a run's own saved
``config.yaml`` (which exists only after a run) becomes the config it was saved from.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bertft.cli import main
from bertft.deploy.export import build_parser
from bertft.deploy.serve import build_parser as build_serve_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDERS = {"N": "2", "M": "1"}


def bertft_commands(text: str) -> list[str]:
    """The ``bertft`` commands of a page's bash blocks, continuation lines joined and comments dropped."""
    commands = []
    for block in BASH_BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            match = re.search(r"(?:^|\s)(?:-m bertft|bertft)\s+(fit|validate|test|predict|export|serve)\b(.*)$", line)
            if match:
                commands.append(f"{match.group(1)}{match.group(2)}")
    return commands


def arguments(command: str) -> list[str]:
    """The command's arguments as the entry point gets them, with the placeholders filled in."""
    args = []
    for token in shlex.split(command):
        token = token.strip("[]") if token.startswith("[--") else token
        token = PLACEHOLDERS.get(token, token)
        if token.startswith("outputs/") and token.endswith("config.yaml"):  # a run's saved config
            token = "configs/quickstart.yaml"
        args.append(token)
    return args


DOCUMENTED = [(page, command) for page in PAGES for command in bertft_commands(page.read_text(encoding="utf-8"))]


def test_the_documentation_has_commands() -> None:
    readme = [command for page, command in DOCUMENTED if page.name == "README.md"]
    assert len(readme) >= 7  # the quickstart, its variations, your own CSV, predict
    assert any(command.startswith("export") for _, command in DOCUMENTED)
    assert any(command.startswith("predict") for _, command in DOCUMENTED)
    assert any(command.startswith("serve") for _, command in DOCUMENTED)


def test_placeholders_are_filled() -> None:
    assert arguments("fit --trainer.devices N --trainer.num_nodes M [--onnx]") == [
        "fit",
        "--trainer.devices",
        "2",
        "--trainer.num_nodes",
        "1",
        "--onnx",
    ]


@pytest.mark.parametrize(
    ("page", "command"), DOCUMENTED, ids=[f"{p.relative_to(ROOT)}:{c[:70]}" for p, c in DOCUMENTED]
)
def test_documented_command_parses(
    page: Path, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the commands are written to run from the repository root
    args = arguments(command)
    if args[0] == "export":
        build_parser().parse_args(args[1:])  # exits with status 2 on an unknown option
        return
    if args[0] == "serve":
        build_serve_parser().parse_args(args[1:])
        return
    if "--help" not in args and "--print_config" not in args:
        args.append("--print_config")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0, f"{page.name}: `{command}`\n{capsys.readouterr().err[-2000:]}"


def test_a_renamed_option_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """What the test above relies on: an option that does not exist stops the parse with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(arguments("fit --config configs/quickstart.yaml --model.learning_rate 3e-5 --print_config"))
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(arguments("--ckpt_path a.ckpt --output_dir out --as_onnx"))
    assert exit_info.value.code == 2
