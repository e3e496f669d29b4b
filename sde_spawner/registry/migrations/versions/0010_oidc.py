"""the person's subject at the OpenID Connect provider

Revision ID: 0010
Revises: 0009 (the lead re-chains it at merge)
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("person") as batch_op:
        batch_op.add_column(sa.Column("idp_subject", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_person_idp_subject"), ["idp_subject"])


def downgrade() -> None:
    with op.batch_alter_table("person") as batch_op:
        batch_op.drop_constraint(op.f("uq_person_idp_subject"), type_="unique")
        batch_op.drop_column("idp_subject")
