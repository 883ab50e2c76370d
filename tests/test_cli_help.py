"""Every option of every command is documented, and its help is a field's documentation:
the options come from the dataclasses in schemas/ (and the search request's fields)."""
from __future__ import annotations

import dataclasses
import inspect

import click
import pytest
from click.testing import CliRunner

from tda import cli as cli_module
from tda.schemas import config, corpus, options, search


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def _field_docs() -> set[str]:
    """The documentation of every field of every dataclass and request model in schemas/."""
    docs = set()
    for module in (config, corpus, options, search):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if dataclasses.is_dataclass(cls):
                docs |= {f.metadata["help"] for f in dataclasses.fields(cls)
                         if "help" in f.metadata}
            elif hasattr(cls, "model_fields"):
                docs |= {f.description for f in cls.model_fields.values() if f.description}
    return docs


COMMANDS = list(_commands(cli_module.cli))


def test_every_command_is_walked():
    assert {name for name, _ in COMMANDS} == {
        "index", "plan", "info", "search", "verify", "precondition", "serve", "view", "demo",
        "eval prepare", "eval train", "eval run", "eval sizes"}


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_has_help_from_a_field(name, command):
    docs = _field_docs()
    opts = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    assert opts, name
    for opt in opts:
        assert opt.help and opt.help.strip(), f"tda {name} {opt.opts[0]} has no help"
        assert opt.help in docs, f"tda {name} {opt.opts[0]}: help is not a field's doc"
    assert command.help and command.help.strip(), f"tda {name} has no description"
    out = CliRunner().invoke(cli_module.cli, name.split() + ["--help"])
    assert out.exit_code == 0, out.output
    for opt in opts:
        assert opt.opts[0] in out.output
