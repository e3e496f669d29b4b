"""imports: requests to bring files into a project's workspaces, their files and reviews

Revision ID: 0011
Revises: 0010

A frozen copy of sde_spawner/imports/models.py at the time of writing; a unit test checks
that a migrated database and a ``create_all`` database have the same tables and columns.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "import_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_slug", sa.String(length=40), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_request")),
    )
    for column in ("project_slug", "requester", "state"):
        op.create_index(f"ix_import_request_{column}", "import_request", [column])
    op.create_table(
        "import_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("detected", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["import_request.id"],
            name=op.f("fk_import_file_request_id_import_request"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_file")),
        sa.UniqueConstraint("request_id", "position", name=op.f("uq_import_file_request_id")),
        sa.UniqueConstraint("request_id", "name", name="uq_import_file_request_id_name"),
    )
    op.create_table(
        "import_review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("checker", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["import_request.id"],
            name=op.f("fk_import_review_request_id_import_request"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_review")),
        sa.UniqueConstraint("request_id", "checker", name=op.f("uq_import_review_request_id")),
    )


def downgrade() -> None:
    op.drop_table("import_review")
    op.drop_table("import_file")
    op.drop_table("import_request")
