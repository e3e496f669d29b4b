"""Tables of imports: requests, their files and the checkers' reviews.

* :class:`ImportRequest` — one member's request to bring files into a project, its state.
* :class:`ImportFile` — one file: its sanitised name, size, sha256 (the blob key in the shared
  write-once blob store) and the kind the byte inspector found.
* :class:`ImportReview` — one checker's decision on one request; unique per (request, checker),
  so one checker never counts twice.

Times are UTC (tz-aware in Python). Created by Alembic revision ``0010``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sde_spawner.audit.models import UTCDateTime
from sde_spawner.checking.models import utcnow
from sde_spawner.db import Base


class ImportRequest(Base):
    __tablename__ = "import_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_slug: Mapped[str] = mapped_column(String(40))
    requester: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    justification: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    #: Approvals the project's policy asked for when the request was made.
    required_approvals: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    files: Mapped[list[ImportFile]] = relationship(
        back_populates="request", order_by="ImportFile.position"
    )
    reviews: Mapped[list[ImportReview]] = relationship(
        back_populates="request", order_by="ImportReview.id"
    )

    __table_args__ = (
        Index("ix_import_request_project_slug", "project_slug"),
        Index("ix_import_request_requester", "requester"),
        Index("ix_import_request_state", "state"),
    )


class ImportFile(Base):
    __tablename__ = "import_file"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("import_request.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    sha256: Mapped[str] = mapped_column(String(64))
    detected: Mapped[str] = mapped_column(String(32), default="")

    request: Mapped[ImportRequest] = relationship(back_populates="files")

    __table_args__ = (
        UniqueConstraint("request_id", "position"),
        UniqueConstraint("request_id", "name", name="uq_import_file_request_id_name"),
    )


class ImportReview(Base):
    __tablename__ = "import_review"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("import_request.id", ondelete="CASCADE"))
    checker: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    request: Mapped[ImportRequest] = relationship(back_populates="reviews")

    __table_args__ = (UniqueConstraint("request_id", "checker"),)


IMPORT_TABLES = [ImportRequest.__table__, ImportFile.__table__, ImportReview.__table__]
