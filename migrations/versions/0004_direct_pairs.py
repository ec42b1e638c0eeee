"""Direct rooms are found by their pair of members, not by an id computed from it.

New direct rooms get random ids; the pair is stored in `direct_low`/`direct_high` (lower user
id first) under a unique index. Existing direct rooms keep their ids: their pairs are filled in
from their memberships.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN and CREATE INDEX, also on SQLite: rebuilding `rooms` there would
    # drop it, and with it (ON DELETE CASCADE) every membership and message.
    op.add_column("rooms", sa.Column("direct_low", sa.Uuid(), nullable=True))
    op.add_column("rooms", sa.Column("direct_high", sa.Uuid(), nullable=True))
    # uuid has no min()/max() in PostgreSQL; ordering works alike on both databases (and
    # matches Python's ordering of UUIDs, which the service uses).
    op.execute(
        """
        UPDATE rooms SET
          direct_low = (SELECT user_id FROM room_members
                        WHERE room_id = rooms.id ORDER BY user_id LIMIT 1),
          direct_high = (SELECT user_id FROM room_members
                         WHERE room_id = rooms.id ORDER BY user_id DESC LIMIT 1)
        WHERE kind = 'direct'
        """
    )
    op.create_index("uq_rooms_direct_pair", "rooms", ["direct_low", "direct_high"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_rooms_direct_pair", table_name="rooms")
    with op.batch_alter_table("rooms", recreate="never") as batch:
        batch.drop_column("direct_high")
        batch.drop_column("direct_low")
