"""schema.graphql is the committed export of the code, and the code holds the whole contract."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    build_schema,
)
from graphql.pyutils import Undefined

from schema import schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "schema.graphql"
CONTRACT_FILE = REPO.parent / "shared/design/api-contract.graphql"

# The account part of the contract: whole types, and the root fields of accounts.
ACCOUNT_TYPES = ("User", "Session", "AuthPayload")
ACCOUNT_SCALARS = ("DateTime",)
ACCOUNT_ROOT_FIELDS = {
    "Query": ("me", "user", "sessions"),
    "Mutation": ("signUp", "signIn", "signOut", "refreshToken"),
}


def contract() -> GraphQLSchema:
    if not CONTRACT_FILE.is_file():
        # CI checks out ../shared: there a missing contract is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"the API contract is missing ({CONTRACT_FILE})")
        pytest.skip(f"the API contract is not checked out next to the repo ({CONTRACT_FILE})")
    return build_schema(CONTRACT_FILE.read_text())


def _kind(type_: Any) -> str:
    for name, cls in (
        ("object", GraphQLObjectType),
        ("interface", GraphQLInterfaceType),
        ("input", GraphQLInputObjectType),
        ("enum", GraphQLEnumType),
        ("scalar", GraphQLScalarType),
        ("union", GraphQLUnionType),
    ):
        if isinstance(type_, cls):
            return name
    return "?"


def contract_problems(ours: GraphQLSchema, theirs: GraphQLSchema) -> list[str]:
    """Every way our schema departs from the contract: types, kinds, enum values, union
    members, interfaces, fields, arguments, defaults and nullability."""
    problems: list[str] = []
    for name, wanted in theirs.type_map.items():
        if name.startswith("__"):
            continue
        have = ours.type_map.get(name)
        if have is None:
            problems.append(f"missing type {name}")
            continue
        if _kind(have) != _kind(wanted):
            problems.append(f"{name} is a {_kind(have)}, the contract says {_kind(wanted)}")
            continue
        if isinstance(wanted, GraphQLEnumType):
            assert isinstance(have, GraphQLEnumType)
            problems += [f"enum {name} lacks {v}" for v in wanted.values if v not in have.values]
        if isinstance(wanted, GraphQLUnionType):
            assert isinstance(have, GraphQLUnionType)
            members = {t.name for t in have.types}
            problems += [
                f"union {name} lacks {t.name}" for t in wanted.types if t.name not in members
            ]
        interfaces = {i.name for i in getattr(have, "interfaces", ())}
        for interface in getattr(wanted, "interfaces", ()):
            if interface.name not in interfaces:
                problems.append(f"{name} does not implement {interface.name}")
        if isinstance(wanted, (GraphQLObjectType, GraphQLInterfaceType)):
            problems += field_problems(name, tuple(wanted.fields), ours, theirs)
    return problems


def field_problems(
    type_name: str, field_names: tuple[str, ...], ours: GraphQLSchema, theirs: GraphQLSchema
) -> list[str]:
    """How our fields of a type differ from the contract's: missing, other types, other args."""
    contract_type, our_type = theirs.type_map[type_name], ours.type_map.get(type_name)
    if not isinstance(our_type, (GraphQLObjectType, GraphQLInterfaceType)):
        return [f"{type_name} is missing or not an object type"]
    assert isinstance(contract_type, (GraphQLObjectType, GraphQLInterfaceType))
    problems = []
    for field_name in field_names:
        wanted, have = contract_type.fields[field_name], our_type.fields.get(field_name)
        where = f"{type_name}.{field_name}"
        if have is None:
            problems.append(f"missing field {where}")
            continue
        if str(have.type) != str(wanted.type):
            problems.append(f"{where} is {have.type}, the contract says {wanted.type}")
        for arg_name, wanted_arg in wanted.args.items():
            have_arg = have.args.get(arg_name)
            if have_arg is None:
                problems.append(f"missing argument {where}({arg_name})")
                continue
            if str(have_arg.type) != str(wanted_arg.type):
                problems.append(
                    f"{where}({arg_name}) is {have_arg.type}, the contract says {wanted_arg.type}"
                )
            if have_arg.default_value != wanted_arg.default_value:
                problems.append(f"{where}({arg_name}) has another default")
        for arg_name, have_arg in have.args.items():
            required = str(have_arg.type).endswith("!") and have_arg.default_value is Undefined
            if arg_name not in wanted.args and required:
                problems.append(f"{where}({arg_name}) is required but not in the contract")
    return problems


def test_schema_file_is_the_export_of_the_code() -> None:
    assert SCHEMA_FILE.is_file(), "schema.graphql is missing: run `make schema` and commit it"
    assert SCHEMA_FILE.read_text() == schema.as_str() + "\n", (
        "schema.graphql is stale: run `make schema` (chat-backend export-schema) and commit it"
    )


def test_schema_holds_every_account_type_field_and_argument_of_the_contract() -> None:
    theirs = contract()
    ours = build_schema(schema.as_str())
    problems: list[str] = []
    for scalar in ACCOUNT_SCALARS:
        if not isinstance(ours.type_map.get(scalar), GraphQLScalarType):
            problems.append(f"missing scalar {scalar}")
    for type_name in ACCOUNT_TYPES:
        contract_type = theirs.type_map[type_name]
        assert isinstance(contract_type, GraphQLObjectType)
        problems += field_problems(type_name, tuple(contract_type.fields), ours, theirs)
    for root, field_names in ACCOUNT_ROOT_FIELDS.items():
        problems += field_problems(root, field_names, ours, theirs)
    assert problems == []


def test_schema_holds_the_whole_contract() -> None:
    assert contract_problems(build_schema(schema.as_str()), contract()) == []


def test_the_contract_check_would_notice_a_missing_kind_of_room_event() -> None:
    theirs = contract()
    without = build_schema(
        schema.as_str().replace("type RoomRenamed implements RoomEvent", "type RoomRenamed", 1)
    )
    assert "RoomRenamed does not implement RoomEvent" in contract_problems(without, theirs)


def test_the_account_check_would_notice_a_difference() -> None:
    # The checker itself: a schema with one account field changed must be reported.
    theirs = contract()
    changed = build_schema(
        CONTRACT_FILE.read_text().replace("  current: Boolean!\n", "  current: Boolean\n", 1)
    )
    assert field_problems("Session", ("current",), changed, theirs) == [
        "Session.current is Boolean, the contract says Boolean!"
    ]
