"""Compiled result plans give exactly what graphql-core gives, or leave the value to it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import strawberry
from graphql import ExecutionResult, execute, parse

from schema import schema
from schema.chat import MessageType
from schema.execution import PlainExecutor, Plans, event_plan
from schema.users import UserType

SENDER = UserType(id=strawberry.ID(str(uuid.uuid4())), name="alice", created_at=datetime.now(UTC))


def message(**overrides: Any) -> MessageType:
    values: dict[str, Any] = {
        "id": strawberry.ID("7"),
        "room_id": strawberry.ID(str(uuid.uuid4())),
        "seq": 7,
        "sender": SENDER,
        "type": "text",
        "data": "hi",
        "created_at": datetime.now(UTC),
        "client_message_id": None,
        "cursor": "c",
        "edited_at": None,
        "deleted_at": None,
        "reactions": [],
    }
    values.update(overrides)
    return MessageType(**values)


class _State:
    plans = Plans()


class _Context:
    state = _State()


DOCUMENTS = [
    'subscription { messageAdded(roomId: "r") { id seq data createdAt sender { id name } } }',
    'subscription { m: messageAdded(roomId: "r") { __typename x: seq cursor clientMessageId } }',
    'subscription { messageAdded(roomId: "r") { seq ...F } } fragment F on Message { data }',
    'subscription($s: Boolean!) { messageAdded(roomId: "r") { seq data @include(if: $s) } }',
    'subscription { messageAdded(roomId: "r") { seq seq data } }',
]


def run(document: str, root: MessageType, executor: Any = None) -> ExecutionResult:
    options = {"executor_class": executor} if executor else {}
    result = execute(
        schema._schema,
        parse(document),
        root_value=root,
        context_value=_Context(),
        variable_values={"s": False},
        **options,
    )
    assert isinstance(result, ExecutionResult)
    return result


@pytest.mark.parametrize("document", DOCUMENTS)
def test_a_planned_result_equals_graphql_cores(document: str) -> None:
    root = message(client_message_id="cm-1")
    plain, core = run(document, root, PlainExecutor), run(document, root)
    assert plain.data == core.data
    assert plain.errors == core.errors


def test_a_null_where_the_schema_forbids_one_gets_graphql_cores_error() -> None:
    root = message(data=None)
    document = DOCUMENTS[0]
    plain, core = run(document, root, PlainExecutor), run(document, root)
    assert core.errors
    assert plain.data == core.data
    assert [error.message for error in plain.errors or []] == [e.message for e in core.errors]


def test_an_event_plan_builds_the_subscription_result_without_execution() -> None:
    document = parse(DOCUMENTS[1])
    operation = document.definitions[0]
    planned = event_plan(Plans(), schema._schema, operation)  # type: ignore[arg-type]
    assert planned is not None
    key, plan = planned
    root = message()
    assert {key: plan(root)} == run(DOCUMENTS[1], root).data


def test_no_event_plan_for_a_selection_graphql_core_must_decide() -> None:
    for source in (DOCUMENTS[2], DOCUMENTS[3]):
        operation = parse(source).definitions[0]
        assert event_plan(Plans(), schema._schema, operation) is None  # type: ignore[arg-type]
