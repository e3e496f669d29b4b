"""breaches and sanctions, deletion certificates, the register's researcher-names flag

Revision ID: 0009
Revises: 0008 (the lead re-chains it after 0007 and 0008 at merge)
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SANCTION = sa.Enum(
    "warning", "suspension", "removal", name="sanction", native_enum=False, length=32
)


def upgrade() -> None:
    op.create_table(
        "breach",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("project_slug", sa.String(length=40), nullable=False),
        sa.Column("occurred_on", sa.Date(), nullable=False),
        sa.Column("what", sa.Text(), nullable=False),
        sa.Column("sanction", _SANCTION, nullable=False),
        sa.Column("recorded_by", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breach")),
    )
    op.create_index(op.f("ix_breach_username"), "breach", ["username"])
    op.create_index(op.f("ix_breach_project_slug"), "breach", ["project_slug"])
    op.create_table(
        "deletion_certificate",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_slug", sa.String(length=40), nullable=False),
        sa.Column("agreement_reference", sa.String(length=100), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletion_certificate")),
    )
    op.create_index(
        op.f("ix_deletion_certificate_project_slug"), "deletion_certificate", ["project_slug"]
    )
    with op.batch_alter_table("project") as batch_op:
        batch_op.add_column(
            sa.Column("register_names", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("project") as batch_op:
        batch_op.drop_column("register_names")
    op.drop_index(op.f("ix_deletion_certificate_project_slug"), "deletion_certificate")
    op.drop_table("deletion_certificate")
    op.drop_index(op.f("ix_breach_project_slug"), "breach")
    op.drop_index(op.f("ix_breach_username"), "breach")
    op.drop_table("breach")
