"""The `tda` command: wiring only; the work lives in engine/, indexer/, searcher/, evaluation/."""
from __future__ import annotations

import dataclasses
import sys
import typing

import click

from tda import __version__


def config_options(cls):
    """Click options for every field of a config dataclass; help text from field metadata.
    The decorated command receives them as keyword arguments named like the fields."""
    hints = typing.get_type_hints(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            hint = hints[f.name]
            name = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if hint is bool:
                opt = click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=f.default,
                                   show_default=True, help=help_text)
            elif typing.get_origin(hint) is typing.Literal:
                opt = click.option(name, type=click.Choice(typing.get_args(hint)),
                                   default=f.default, show_default=True, help=help_text)
            else:
                opt = click.option(name, type=hint, default=f.default, show_default=True,
                                   help=help_text)
            fn = opt(fn)
        return fn
    return decorate


def pick(cls, kwargs: dict):
    """Build ``cls`` from the kwargs named like its fields; returns (config, remaining kwargs)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names}), \
        {k: v for k, v in kwargs.items() if k not in names}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tda")
def main() -> None:
    """tda: which training examples made a language model say what it said.

    TrackStar (projected, optimizer-corrected, normalized loss gradients) searched like
    embeddings, next to a BM25 baseline.
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
