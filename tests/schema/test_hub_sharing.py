"""The hub's sharing rule: one result per event for identical selections, never shared between
viewers when the selection reads a viewer-dependent field."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import parse

from schema.execution import Plans
from schema.hub import Hub
from schema.shapes import VIEWER_DEPENDENT, Shapes
from schema.sinks import Channel, Operation, Sink, Socket


@strawberry.type
class Item:
    title: str

    @strawberry.field(metadata={VIEWER_DEPENDENT: True})
    def mine(self, info: strawberry.Info) -> bool:
        return bool(info.context.viewer_id == uuid.UUID(int=1))


@strawberry.type
class Query:
    item: Item = strawberry.field(default_factory=lambda: Item(title="t"))


SCHEMA = strawberry.Schema(query=Query)._schema
PLAIN = "query Plain($n: Int) { item { title } }"
PERSONAL = "query Personal { item { title mine } }"


@dataclass
class Viewer:
    viewer_id: uuid.UUID


def _sink(hub: Hub, query: str, viewer: int, variables: dict[str, Any] | None = None) -> Sink:
    socket = Socket(hub, protocol="graphql-transport-ws", transport=None, fallback=_no_send)
    operation = Operation(
        id="1",
        query=query,
        variables=variables,
        operation_name=None,
        socket=socket,
        context=Viewer(uuid.UUID(int=viewer)),
    )
    shape = hub.shapes.of(parse(query), query, None)
    return Sink(
        hub, operation, shape, Channel("room:x", None), user_id=uuid.UUID(int=viewer), events=True
    )


async def _no_send(_: str) -> None:
    raise AssertionError("nothing is sent in these tests")


def _hub() -> Hub:
    hub = Hub.__new__(Hub)
    hub.shapes = Shapes(SCHEMA, Plans())
    return hub


def test_a_selection_of_a_viewer_dependent_field_is_marked_per_viewer() -> None:
    shapes = Shapes(SCHEMA)
    assert shapes.of(parse(PERSONAL), PERSONAL, None).per_viewer
    assert not shapes.of(parse(PLAIN), PLAIN, None).per_viewer


def test_reaction_me_in_a_subscription_selection_makes_it_per_viewer() -> None:
    from schema import schema

    shapes = Shapes(schema._schema)
    posted = 'subscription { roomEvents(roomId: "r") { ... on MessagePosted { message { %s } } } }'
    mine, counts = posted % "reactions { me }", posted % "reactions { count }"
    assert shapes.of(parse(mine), mine, None).per_viewer
    assert not shapes.of(parse(counts), counts, None).per_viewer


async def test_two_viewers_of_a_viewer_dependent_selection_never_share_a_result() -> None:
    hub = _hub()
    alice, bob, alice_again = (_sink(hub, PERSONAL, n) for n in (1, 2, 1))
    assert alice.key != bob.key
    assert alice.key == alice_again.key


async def test_two_viewers_of_a_plain_selection_share_one_result() -> None:
    hub = _hub()
    alice, bob = _sink(hub, PLAIN, 1), _sink(hub, PLAIN, 2)
    assert alice.key == bob.key


async def test_a_variable_read_inside_the_selection_splits_the_sharing() -> None:
    query = "query V($n: Boolean!) { item { title @include(if: $n) } }"
    hub = _hub()
    shown, hidden = _sink(hub, query, 1, {"n": True}), _sink(hub, query, 1, {"n": False})
    assert shown.key != hidden.key
