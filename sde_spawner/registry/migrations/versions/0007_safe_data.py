"""safe data: dataset identifier column, opt-out lists, project data policy, extract versions

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.add_column(sa.Column("identifier_column", sa.String(length=64), nullable=True))
    op.create_table(
        "optout_list",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source_name", sa.String(length=300), nullable=False),
        sa.Column("loaded_by", sa.String(length=100), nullable=False),
        sa.Column("loaded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optout_list")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_optout_list_name")),
    )
    op.create_index(op.f("ix_optout_list_name"), "optout_list", ["name"], unique=False)
    op.create_table(
        "optout_entry",
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("nhs_number", sa.String(length=10), nullable=False),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["optout_list.id"],
            name=op.f("fk_optout_entry_list_id_optout_list"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("list_id", "nhs_number", name=op.f("pk_optout_entry")),
    )
    op.create_table(
        "project_data_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("local_optouts_json", sa.Text(), nullable=False),
        sa.Column("write_csv", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_project_data_policy_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project_data_policy")),
        sa.UniqueConstraint("project_id", name=op.f("uq_project_data_policy_project_id")),
    )
    op.create_table(
        "extract_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_slug", sa.String(length=40), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("directory", sa.Text(), nullable=False),
        sa.Column("built_at", sa.DateTime(), nullable=False),
        sa.Column("details_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extract_version")),
        sa.UniqueConstraint(
            "project_slug", "username", "version", name=op.f("uq_extract_version_project_slug")
        ),
    )
    op.create_index(
        op.f("ix_extract_version_project_slug"), "extract_version", ["project_slug"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_extract_version_project_slug"), table_name="extract_version")
    op.drop_table("extract_version")
    op.drop_table("project_data_policy")
    op.drop_table("optout_entry")
    op.drop_index(op.f("ix_optout_list_name"), table_name="optout_list")
    op.drop_table("optout_list")
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.drop_column("identifier_column")
