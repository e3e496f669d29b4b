"""Tables of output checking: requests, their snapshot versions and files, reviews, downloads.

* :class:`ExportRequest` — one request to take files out of a project, its state and owner.
* :class:`ExportVersion` — one snapshot of files; a resubmission after "returned" adds one.
  Reviews belong to a version, so reviews of an old version never count for a new one.
* :class:`ExportFile` — one file of a version: declared path/size/sha256, and the blob key
  once the uploaded bytes were verified against them.
* :class:`Review` — one checker's review of one version: a claim (``submitted_at`` empty)
  until submitted with a :class:`FileDecision` for every file. Unique per (version, checker),
  so one checker can never count twice.
* :class:`ReleaseDownload` — every download of released bytes.

Times are UTC (tz-aware in Python). Created by Alembic revision ``0004``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sde_spawner.audit.models import UTCDateTime
from sde_spawner.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExportRequest(Base):
    __tablename__ = "export_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_slug: Mapped[str] = mapped_column(String(40))
    requester: Mapped[str] = mapped_column(String(64))
    server_name: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16))
    justification: Mapped[str] = mapped_column(Text, default="")
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The requester's own sequence number of the request, given at its first submission:
    #: the number shown outside the workspace (``id`` also counts drafts, which no checker
    #: saw, so showing it outside would be a channel). Revision ``0008``.
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Canonical JSON of the release manifest, fixed when the request is approved.
    manifest: Mapped[str | None] = mapped_column(Text, nullable=True)

    versions: Mapped[list[ExportVersion]] = relationship(
        back_populates="request", order_by="ExportVersion.number"
    )

    __table_args__ = (
        Index("ix_export_request_project_slug", "project_slug"),
        Index("ix_export_request_requester", "requester"),
        Index("ix_export_request_state", "state"),
        UniqueConstraint("requester", "number", name="uq_export_request_requester_number"),
    )

    @property
    def version(self) -> ExportVersion:
        """The current version (the one being prepared, reviewed or released)."""
        return next(v for v in self.versions if v.number == self.current_version)


class ExportVersion(Base):
    __tablename__ = "export_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_request.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    justification: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    request: Mapped[ExportRequest] = relationship(back_populates="versions")
    files: Mapped[list[ExportFile]] = relationship(
        back_populates="version", order_by="ExportFile.position"
    )
    reviews: Mapped[list[Review]] = relationship(back_populates="version", order_by="Review.id")

    __table_args__ = (UniqueConstraint("request_id", "number"),)


class ExportFile(Base):
    __tablename__ = "export_file"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("export_version.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    version: Mapped[ExportVersion] = relationship(back_populates="files")

    __table_args__ = (UniqueConstraint("version_id", "position"),)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Review(Base):
    __tablename__ = "export_review"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("export_version.id", ondelete="CASCADE"))
    checker: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    version: Mapped[ExportVersion] = relationship(back_populates="reviews")
    decisions: Mapped[list[FileDecision]] = relationship(
        back_populates="review", order_by="FileDecision.file_id"
    )

    __table_args__ = (UniqueConstraint("version_id", "checker"),)


class FileDecision(Base):
    __tablename__ = "export_file_decision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("export_review.id", ondelete="CASCADE"))
    file_id: Mapped[int] = mapped_column(ForeignKey("export_file.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")

    review: Mapped[Review] = relationship(back_populates="decisions")
    file: Mapped[ExportFile] = relationship()

    __table_args__ = (UniqueConstraint("review_id", "file_id"),)


class ReleaseDownload(Base):
    __tablename__ = "export_release_download"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_request.id", ondelete="CASCADE"))
    file_id: Mapped[int] = mapped_column(ForeignKey("export_file.id", ondelete="CASCADE"))
    person: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sha256: Mapped[str] = mapped_column(String(64))
    remote_ip: Mapped[str] = mapped_column(String(64), default="")


CHECKING_TABLES = [
    ExportRequest.__table__,
    ExportVersion.__table__,
    ExportFile.__table__,
    Review.__table__,
    FileDecision.__table__,
    ReleaseDownload.__table__,
]
