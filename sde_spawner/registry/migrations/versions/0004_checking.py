"""output checking: export requests, snapshot versions and files, reviews, release downloads

Revision ID: 0004
Revises: 0003

A frozen copy of sde_spawner/checking/models.py at the time of writing; a unit test checks
that a migrated database and a ``create_all`` database have the same tables and columns.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _big():
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "export_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_slug", sa.String(length=40), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("manifest", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_request")),
    )
    for column in ("project_slug", "requester", "state"):
        op.create_index(f"ix_export_request_{column}", "export_request", [column])

    op.create_table(
        "export_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["export_request.id"],
            name=op.f("fk_export_version_request_id_export_request"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_version")),
        sa.UniqueConstraint("request_id", "number", name=op.f("uq_export_version_request_id")),
    )

    op.create_table(
        "export_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("size", _big(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=64), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["export_version.id"],
            name=op.f("fk_export_file_version_id_export_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_file")),
        sa.UniqueConstraint("version_id", "position", name=op.f("uq_export_file_version_id")),
    )

    op.create_table(
        "export_review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("checker", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["export_version.id"],
            name=op.f("fk_export_review_version_id_export_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_review")),
        sa.UniqueConstraint("version_id", "checker", name=op.f("uq_export_review_version_id")),
    )

    op.create_table(
        "export_file_decision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=40), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["review_id"],
            ["export_review.id"],
            name=op.f("fk_export_file_decision_review_id_export_review"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["export_file.id"],
            name=op.f("fk_export_file_decision_file_id_export_file"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_file_decision")),
        sa.UniqueConstraint(
            "review_id", "file_id", name=op.f("uq_export_file_decision_review_id")
        ),
    )

    op.create_table(
        "export_release_download",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("remote_ip", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["export_request.id"],
            name=op.f("fk_export_release_download_request_id_export_request"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["export_file.id"],
            name=op.f("fk_export_release_download_file_id_export_file"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_release_download")),
    )


def downgrade() -> None:
    op.drop_table("export_release_download")
    op.drop_table("export_file_decision")
    op.drop_table("export_review")
    op.drop_table("export_file")
    op.drop_table("export_version")
    for column in ("project_slug", "requester", "state"):
        op.drop_index(f"ix_export_request_{column}", table_name="export_request")
    op.drop_table("export_request")
