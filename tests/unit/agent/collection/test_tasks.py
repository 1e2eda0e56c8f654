"""Which task requests the agent runs, and with exactly which argv (no process is started here)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from opsmgr.agent.tasks import (
    AllowedCommand,
    Approved,
    Refused,
    TaskSettings,
    authorize,
    expand_arguments,
)
from opsmgr.api.management_pack import Task
from opsmgr.protocol import agent_channel_pb2 as pb

ECHO = shutil.which("echo") or "/bin/echo"


def task(**fields: Any) -> Task:
    body: dict[str, Any] = {"name": "say", "command": "echo", "arguments": ["hello", "{who}"],
                            "parameters": [{"name": "who", "required": True}], "timeoutSeconds": 30}
    body.update(fields)
    return Task.model_validate(body)


def settings(**entry: Any) -> TaskSettings:
    return TaskSettings(allow=[AllowedCommand(command=ECHO, **entry)])


def request(name: str = "say", **parameters: str) -> pb.TaskRequest:
    return pb.TaskRequest(task_id="t1", task=name, parameters=parameters)


def test_a_parameter_fills_one_whole_argument() -> None:
    decision = authorize(request(who="world"), {"say": task()}, settings())
    assert isinstance(decision, Approved)
    assert decision.argv[1:] == ["hello", "world"]
    assert decision.timeout_seconds == 30


@pytest.mark.parametrize("value", ["; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a\nrm -rf /", "x && y | z",
                                   "a b c", "'quoted'", "*"])
def test_shell_syntax_in_a_parameter_stays_one_literal_argument(value: str) -> None:
    decision = authorize(request(who=value), {"say": task()}, settings())
    assert isinstance(decision, Approved)
    assert decision.argv[1:] == ["hello", value]


def test_braces_inside_a_longer_argument_are_literal() -> None:
    decision = authorize(request(who="x"), {"say": task(arguments=["--name={who}", "{who}"])}, settings())
    assert isinstance(decision, Approved) and decision.argv[1:] == ["--name={who}", "x"]


def test_an_option_looking_value_is_refused_unless_the_allow_list_permits_options() -> None:
    refused = authorize(request(who="--help"), {"say": task()}, settings())
    assert isinstance(refused, Refused) and "allowOptionValues" in refused.reason
    approved = authorize(request(who="--help"), {"say": task()}, settings(allow_option_values=True))
    assert isinstance(approved, Approved) and approved.argv[-1] == "--help"


def test_a_command_missing_from_the_local_allow_list_is_refused_whatever_the_pack_says() -> None:
    decision = authorize(request(who="x"), {"say": task()}, TaskSettings(allow=[AllowedCommand(command="/bin/df")]))
    assert isinstance(decision, Refused)
    assert "not on this agent's allow-list" in decision.reason


def test_an_arguments_prefix_pins_what_the_command_may_do() -> None:
    decision = authorize(request(who="x"), {"say": task()}, settings(arguments_prefix=["goodbye"]))
    assert isinstance(decision, Refused) and "beginning ['goodbye']" in decision.reason


def test_unknown_task_unknown_parameter_and_missing_required_parameter_are_refused() -> None:
    tasks = {"say": task()}
    assert isinstance(authorize(request("other"), tasks, settings()), Refused)
    assert "no parameter extra" in authorize(request(who="x", extra="y"), tasks, settings()).reason  # type: ignore[union-attr]
    assert "needs parameter who" in authorize(request(), tasks, settings()).reason  # type: ignore[union-attr]


def test_defaults_fill_missing_optional_parameters_and_unset_ones_are_left_out() -> None:
    defined = task(arguments=["{a}", "{b}"], parameters=[{"name": "a", "default": "one"}, {"name": "b"}])
    assert expand_arguments(defined, {}, options_allowed=False) == ["one"]


def test_a_request_whose_command_differs_from_the_pack_is_refused() -> None:
    forged = request(who="x")
    forged.command.extend(["/bin/sh", "-c", "id"])
    decision = authorize(forged, {"say": task()}, settings())
    assert isinstance(decision, Refused) and "forged" in decision.reason
    matching = request(who="x")
    matching.command.extend(["echo", "hello", "{who}"])
    assert isinstance(authorize(matching, {"say": task()}, settings()), Approved)


def test_the_request_timeout_never_exceeds_the_packs() -> None:
    long = request(who="x")
    long.timeout_seconds = 999
    decision = authorize(long, {"say": task()}, settings())
    assert isinstance(decision, Approved) and decision.timeout_seconds == 30


def test_the_allow_list_takes_only_absolute_paths() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        AllowedCommand(command="echo")
