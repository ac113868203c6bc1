"""The fast path registers one command module; it must know every command there is."""

from __future__ import annotations

import argparse
import importlib

from liveos_tools.cli.main import COMMAND_MODULES, COMMAND_NAMES, build_parser


def _registered(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(module).register(sub)
    return set(sub.choices)


def test_every_registered_command_is_in_the_fast_path_table() -> None:
    seen: dict[str, str] = {}
    for module in COMMAND_MODULES:
        for name in _registered(module):
            seen[name] = module
    assert seen == COMMAND_NAMES


def test_a_known_command_loads_only_its_module() -> None:
    parser = build_parser(["--debug", "status", "/x"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"status"}
    full = build_parser(["--help"])
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMAND_NAMES)


def test_negative_sizes_are_values_not_options() -> None:
    from liveos_tools.cli.main import _join_negative_sizes

    assert _join_negative_sizes(["home", "resize", "S", "--by", "-512M", "--yes"]) == [
        "home",
        "resize",
        "S",
        "--by=-512M",
        "--yes",
    ]
    assert _join_negative_sizes(["grow", "--by", "512M"]) == ["grow", "--by", "512M"]
    assert _join_negative_sizes(["x", "--by", "--yes"]) == ["x", "--by", "--yes"]
    args = build_parser(["home"]).parse_args(
        _join_negative_sizes(["home", "resize", "S", "--by", "-512M"])
    )
    assert args.by == "-512M"
