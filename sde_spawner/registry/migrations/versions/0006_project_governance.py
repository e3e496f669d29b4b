"""project governance: organisation, public benefit, lay sign-off, output policy, limits

Output policy (beyond ``required_approvals``, which has its own column since 0001) is one JSON
text column, ``output_policy_json``; resource limits are two typed columns, ``cpu_limit`` and
``mem_limit`` (NULL: the spawner's defaults).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KIND = sa.Enum(
    "nhs",
    "academic",
    "charity",
    "commercial",
    name="organisationkind",
    native_enum=False,
    length=32,
)


def upgrade() -> None:
    with op.batch_alter_table("project") as batch_op:
        batch_op.add_column(
            sa.Column("organisation", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("organisation_kind", _KIND, nullable=True))
        batch_op.add_column(
            sa.Column("public_benefit", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("lay_member_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lay_member_signed_on", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column("output_policy_json", sa.Text(), nullable=False, server_default="{}")
        )
        batch_op.add_column(sa.Column("cpu_limit", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("mem_limit", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("project") as batch_op:
        for name in (
            "mem_limit",
            "cpu_limit",
            "output_policy_json",
            "lay_member_signed_on",
            "lay_member_name",
            "public_benefit",
            "organisation_kind",
            "organisation",
        ):
            batch_op.drop_column(name)
