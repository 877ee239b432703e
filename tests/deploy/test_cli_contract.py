"""deploy/ checks commands against the CLI contract; the CLI must offer exactly that."""

from __future__ import annotations

from .project import SUBCOMMANDS, cli_subcommands, command_problems


def test_cli_offers_the_subcommands_deploy_relies_on() -> None:
    assert cli_subcommands() == SUBCOMMANDS


def test_command_problems_are_specific() -> None:
    assert command_problems(["worker", "--model", "smollm2"], SUBCOMMANDS, {"smollm2"}) == []
    assert command_problems(["registry", "check"], SUBCOMMANDS) == []
    assert command_problems([], SUBCOMMANDS) != []
    assert "not an slm-server subcommand" in command_problems(["server"], SUBCOMMANDS)[0]
    assert "without `--model NAME`" in command_problems(["worker", "--model"], SUBCOMMANDS)[0]
    assert "no local model" in command_problems(["worker", "--model", "x"], SUBCOMMANDS, {"smollm2"})[0]
    assert "without `check`" in command_problems(["registry"], SUBCOMMANDS)[0]
