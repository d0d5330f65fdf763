"""The command line: every --help shows every default, and --version."""

from __future__ import annotations

import pytest

from streamfusion import __version__
from streamfusion.cli import COMMANDS, build_parser, main
from streamfusion.online.flags import config_from_args


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_shows_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    formatter = sub._get_formatter()
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert flags
    for action in flags:
        shown = formatter._get_help_string(action)
        assert shown.replace("%(default)s", "X").count("(default") == 1, (action.option_strings,
                                                                        shown)
        # argparse prints no help line, so no default, for a flag without help text
        rendered = " ".join(sub._get_formatter()._format_action(action).split())
        assert "(default" in rendered, (action.option_strings, rendered)
    assert "(default" in sub.format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"streamfusion {__version__}"


def replay_config(*flags):
    return config_from_args(build_parser().parse_args(["replay", *flags]))


def test_the_live_blend_is_on_unless_switched_off():
    assert replay_config().live_blend is True
    assert replay_config("--no-live-blend").live_blend is False


def test_pair_weights_are_on_unless_switched_off():
    assert replay_config().pair_weights is True
    assert replay_config("--no-pair-weights").pair_weights is False
    assert replay_config().field_weights is True
    assert replay_config("--no-field-weights").field_weights is False


def test_tree_shrinkage_flag():
    assert replay_config().tree_shrinkage == 0.5
    assert replay_config("--tree-shrinkage", "1").tree_shrinkage == 1.0
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit):
            replay_config("--tree-shrinkage", bad)


def test_step_rows_flag():
    assert replay_config().step_rows == 256
    assert replay_config("--step-rows", "0").step_rows == 0


def test_adam_batch_flag():
    assert replay_config().adam_batch == 32
    assert replay_config("--adam-batch", "0").adam_batch == 0
    with pytest.raises(SystemExit):
        replay_config("--adam-batch", "-1")


def test_delimiter_flag():
    from streamfusion.replay import _run_parser

    def delimiter(*args):
        return _run_parser().parse_args(list(args)).delimiter

    assert delimiter() is None  # found from the file
    assert delimiter("--delimiter", "tab") == delimiter("--delimiter", "\\t") == "\t"
    assert delimiter("--delimiter", ";") == ";"
