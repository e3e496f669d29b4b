"""export request number: a per-requester sequence assigned at first submission, the only
request number shown outside the workspace (global ids move with drafts nobody checked)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_request") as batch_op:
        batch_op.add_column(sa.Column("number", sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(
            "uq_export_request_requester_number", ["requester", "number"]
        )
    # requests submitted before this revision: numbered per requester in id order
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, requester FROM export_request WHERE state != 'draft' ORDER BY id")
    ).fetchall()
    seen: dict[str, int] = {}
    for rid, requester in rows:
        seen[requester] = seen.get(requester, 0) + 1
        conn.execute(
            sa.text("UPDATE export_request SET number = :n WHERE id = :id"),
            {"n": seen[requester], "id": rid},
        )


def downgrade() -> None:
    with op.batch_alter_table("export_request") as batch_op:
        batch_op.drop_constraint("uq_export_request_requester_number", type_="unique")
        batch_op.drop_column("number")
