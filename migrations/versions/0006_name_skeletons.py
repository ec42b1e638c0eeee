"""Confusable skeletons of user names, unique: a name that looks like another cannot join.

Every existing account gets the skeleton of its name. Should two existing names share one,
the older account keeps it and the newer one's is made unique with its id: both accounts keep
working, and no new name can look like either. `name_key` is unchanged: for every name the old
rules accepted, PRECIS UsernameCaseMapped (case-folded) gives the key it already has, or the
name is one PRECIS refuses and its key is still computed the old way (api.users.names).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from api.users.names import skeleton

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USERS = sa.table(
    "users",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("skeleton_key", sa.String()),
)


def upgrade() -> None:
    # Added as a plain column with a unique index: on SQLite a NOT NULL change would rebuild
    # `users`, and dropping it would cascade to every session and membership.
    op.add_column("users", sa.Column("skeleton_key", sa.String(length=255), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(USERS.c.id, USERS.c.name).order_by(USERS.c.created_at, USERS.c.id)
    ).all()
    taken: set[str] = set()
    for user_id, name in rows:
        key = skeleton(name)
        if key in taken:
            key = f"{key}#{user_id}"
        taken.add(key)
        connection.execute(USERS.update().where(USERS.c.id == user_id).values(skeleton_key=key))
    op.create_index("uq_users_skeleton_key", "users", ["skeleton_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_skeleton_key", table_name="users")
    with op.batch_alter_table("users", recreate="never") as batch:
        batch.drop_column("skeleton_key")
