"""Every command line the README, the guide and the CLI's own --help examples quote, run in a small
mode: parsed by the real parser (a misspelt command or option fails here), its config file found,
and its configuration resolved with every --set it gives (an unknown key, component or option
fails here). Lines with placeholders written as such (``[FILE]``, ``...``, ``a | b``) are usage
sketches, not commands, and are skipped; anything else that starts ``pyro-vae`` (or runs
``-m pyro_vae``) is checked."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pyro_vae.cli import _config_from, build_parser
from pyro_vae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
PLACEHOLDERS = ("[", "...", "<")


def _fenced_lines(text: str):
    """(line number, line) of the lines inside fenced code blocks, continuations (``\\``) joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _command(line: str) -> str | None:
    """The pyro-vae command a line runs (its arguments after ``pyro-vae``), or None."""
    line = line.strip().removeprefix("$ ")
    if line.startswith("pyro-vae "):
        command = line[len("pyro-vae "):]
    elif line.startswith(("torchrun ", "python ")) and " -m pyro_vae " in line:
        command = line.split(" -m pyro_vae ", 1)[1]
    else:
        return None
    command = _before_shell(command)  # a comment, the shell's part (outside quotes)
    if not command or any(mark in command for mark in PLACEHOLDERS):
        return None
    return command


def _before_shell(command: str) -> str:
    """The command up to a comment or a shell operator (``>``, ``|``, ``&&``, ``;``) outside quotes: a
    ``|`` inside quotes is the command's own (compare --variants 'a: ... | b: ...')."""
    quote, i = "", 0
    while i < len(command):
        char = command[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif re.match(r" #|\s(?:>|>>|\||&&|;)\s", command[i:]):
            return command[:i].strip()
        i += 1
    return command.strip()


def quoted_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, line in _fenced_lines(text):
            command = _command(line)
            if command:
                found.append((f"{page.relative_to(ROOT)}:{number}", command))
        for number, line in enumerate(text.splitlines(), 1):  # inline code: `pyro-vae ...`
            for span in re.findall(r"`(pyro-vae [^`]+)`", line):
                command = _command(span)
                if command and " " in command:
                    found.append((f"{page.relative_to(ROOT)}:{number}", command))
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # the CLI's own --help examples
        for name, sub in action.choices.items():
            for line in (sub.epilog or "").splitlines()[1:]:
                command = _command(line)
                if command:
                    found.append((f"pyro-vae {name} --help", command))
    return found


COMMANDS = quoted_commands()


def test_the_pages_quote_commands_of_every_kind():
    """The collector finds what the pages hold (a guard against a test that checks nothing)."""
    verbs = {command.split()[0] for _, command in COMMANDS}
    assert {"train", "evaluate", "sample", "encode", "compare", "convert", "export", "interpolate", "traverse",
            "list"} <= verbs
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:40]}" for w, c in COMMANDS])
def test_a_quoted_command_parses_and_its_config_resolves(where, command):
    parser = build_parser()
    argv = shlex.split(command)
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `pyro-vae {command}` does not parse")
    overrides = getattr(args, "set", None)
    if overrides is None or getattr(args, "resume", None):
        return
    config = getattr(args, "config", None)
    if config is not None and config.endswith(".toml") and "/" in config and config.startswith("examples/"):
        assert (ROOT / config).is_file(), f"{where}: {config} is not in the repository"
        config = str(ROOT / config)
    elif config is not None:
        config = None  # a placeholder (CONFIG.toml, a user's file): the overrides alone
    if getattr(args, "data", None):  # a user's file that is not here: its data.* options stand alone
        overrides = [o for o in overrides if not o.startswith("data.")]
    try:
        resolved = _config_from(config, overrides)
        if argv[0] == "compare":  # its objectives and model variants, as compare parses them before it starts
            from pyro_vae.compare import parse_objectives, parse_variants

            parse_objectives(args.objectives, args.particles)
            parse_variants(args.variants, resolved)
    except ConfigError as e:
        pytest.fail(f"{where}: `pyro-vae {command}` is refused: {e}")


def test_a_pipe_inside_quotes_is_the_command_s_own():
    assert _command("pyro-vae compare --variants 'a: model.prior=vamp | b: model.prior=flow' | head") == \
        "compare --variants 'a: model.prior=vamp | b: model.prior=flow'"
    assert _command("pyro-vae list | head  # the first lines") == "list"


def test_a_wrong_option_in_a_page_would_fail_here():
    """The checks above catch the two kinds of mistake a page can make."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(shlex.split("evaluate runs/x --sample 5"))
    with pytest.raises(ConfigError):
        _config_from(None, ["data.labels_key=y"])
    assert isinstance(parser, argparse.ArgumentParser)
