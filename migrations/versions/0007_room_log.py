"""Group rooms and one log per room.

`room_events` holds every change to a room (messages posted, edited, deleted, reactions,
membership, roles, renames) under the room's gap-free seq; every existing message becomes its
MessagePosted entry with the seq it already has. Messages gain `edited_at` and `deleted_at`,
reactions get a table, rooms a name, and memberships a role, a join time and the seq of the
member's MemberJoined entry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, also on SQLite: rebuilding a table there would cascade-delete its
    # dependants (see 0004).
    op.add_column("rooms", sa.Column("name", sa.String(100), nullable=True))
    op.add_column(
        "room_members", sa.Column("role", sa.String(16), nullable=False, server_default="MEMBER")
    )
    op.add_column("room_members", sa.Column("joined_at", sa.DateTime(timezone=True)))
    op.add_column(
        "room_members",
        sa.Column("joined_seq", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute(
        "UPDATE room_members SET joined_at = "
        "(SELECT created_at FROM rooms WHERE rooms.id = room_members.room_id)"
    )
    op.add_column("messages", sa.Column("edited_at", sa.DateTime(timezone=True)))
    op.add_column("messages", sa.Column("deleted_at", sa.DateTime(timezone=True)))
    op.create_table(
        "room_events",
        sa.Column(
            "room_id",
            sa.Uuid(),
            sa.ForeignKey("rooms.id", name="fk_room_events_room_id_rooms", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column(
            "actor_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", name="fk_room_events_actor_id_users", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("member_id", sa.Uuid(), nullable=True),
        sa.Column("detail", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("room_id", "seq", name="pk_room_events"),
    )
    op.execute(
        "INSERT INTO room_events (room_id, seq, kind, actor_id, created_at, message_id) "
        "SELECT room_id, seq, 'posted', sender_id, created_at, id FROM messages"
    )
    op.create_table(
        "reactions",
        sa.Column(
            "message_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "messages.id", name="fk_reactions_message_id_messages", ondelete="CASCADE"
            ),
            nullable=False,
            autoincrement=False,
        ),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", name="fk_reactions_user_id_users", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("emoji", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "user_id", "emoji", name="pk_reactions"),
    )
    op.create_index("ix_reactions_message_seq", "reactions", ["message_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_reactions_message_seq", table_name="reactions")
    op.drop_table("reactions")
    op.drop_table("room_events")
    with op.batch_alter_table("messages", recreate="never") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("edited_at")
    with op.batch_alter_table("room_members", recreate="never") as batch:
        batch.drop_column("joined_seq")
        batch.drop_column("joined_at")
        batch.drop_column("role")
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.drop_column("name")
