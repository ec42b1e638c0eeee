"""Deleting a user never deletes the messages they sent (RESTRICT instead of CASCADE).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_messages_sender_id_users"


def _sender_key(ondelete: str) -> None:
    # On SQLite batch mode rebuilds `messages` (nothing references it, so the rebuild drops
    # no other row); on PostgreSQL these are plain ALTER TABLE statements.
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.create_foreign_key(FK, "users", ["sender_id"], ["id"], ondelete=ondelete)


def upgrade() -> None:
    _sender_key("RESTRICT")


def downgrade() -> None:
    _sender_key("CASCADE")
