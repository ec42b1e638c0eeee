"""Each member's copy of its room's last activity, and the index the room list reads.

`rooms(first, after)` sorted every one of the user's rooms for each page; with
`room_members.last_activity_at` and the index (user_id, last_activity_at DESC, room_id DESC) a
page reads its rows in index order and stops.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "room_members", sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(
        "UPDATE room_members SET last_activity_at = "
        "(SELECT last_activity_at FROM rooms WHERE rooms.id = room_members.room_id)"
    )
    op.create_index(
        "ix_room_members_activity",
        "room_members",
        ["user_id", sa.text("last_activity_at DESC"), sa.text("room_id DESC")],
    )


def downgrade() -> None:
    op.drop_index("ix_room_members_activity", table_name="room_members")
    with op.batch_alter_table("room_members", recreate="never") as batch:
        batch.drop_column("last_activity_at")
