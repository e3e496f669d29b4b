"""ORM models of the registry: people, projects, agreements, memberships, datasets, grants.

A *grant* is the minimum dataset: for one membership and one dataset, the columns and the
row filter that member may see. Everything the spawner decides is read from these rows.
"""

from __future__ import annotations

import enum
import json
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sde_spawner.db import Base


class PersonStatus(enum.StrEnum):
    active = "active"
    suspended = "suspended"


class ProjectStatus(enum.StrEnum):
    draft = "draft"  # entered, not yet approved by the Data Access Committee
    approved = "approved"
    suspended = "suspended"
    closed = "closed"


class Purpose(enum.StrEnum):
    """Permitted purposes. Insurance and marketing are deliberately absent."""

    research = "research"
    public_health = "public_health"
    service_evaluation = "service_evaluation"
    clinical_audit = "clinical_audit"
    planning = "planning"


FORBIDDEN_PURPOSES = frozenset({"insurance", "marketing"})


class OrganisationKind(enum.StrEnum):
    """Who the applicant organisation is; commercial applicants still need a permitted purpose."""

    nhs = "nhs"
    academic = "academic"
    charity = "charity"
    commercial = "commercial"


class Role(enum.StrEnum):
    researcher = "researcher"
    output_checker = "output_checker"
    project_lead = "project_lead"


WORKSPACE_ROLES = frozenset({Role.researcher, Role.project_lead})


def _enum(cls):
    return Enum(cls, native_enum=False, length=32, validate_strings=True)


class Person(Base):
    __tablename__ = "person"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(200), default="")
    #: The person's subject (``sub``) at the OpenID Connect provider (revision 0010): a login
    #: whose verified ID token carries it is this person. None: matched by verified e-mail.
    idp_subject: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    status: Mapped[PersonStatus] = mapped_column(_enum(PersonStatus), default=PersonStatus.active)
    training_expires: Mapped[date | None] = mapped_column(Date, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    memberships: Mapped[list[Membership]] = relationship(back_populates="person")


class Project(Base):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    status: Mapped[ProjectStatus] = mapped_column(_enum(ProjectStatus), default=ProjectStatus.draft)
    dac_reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    dac_approved_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    ethics_reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    purpose: Mapped[Purpose] = mapped_column(_enum(Purpose), default=Purpose.research)
    lay_summary: Mapped[str] = mapped_column(Text, default="")
    required_approvals: Mapped[int] = mapped_column(Integer, default=2)
    # Governance (revision 0006): who applies, why it is in the public interest, and the
    # lay (public) member of the approval panel who signed the approval off.
    organisation: Mapped[str] = mapped_column(String(200), default="", server_default="")
    organisation_kind: Mapped[OrganisationKind | None] = mapped_column(
        _enum(OrganisationKind), nullable=True
    )
    public_benefit: Mapped[str] = mapped_column(Text, default="", server_default="")
    lay_member_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lay_member_signed_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    #: Output policy beyond ``required_approvals``, as one JSON object: ``allowed_file_types``
    #: (list of suffixes), ``cell_threshold``, ``dof_threshold``, ``zeros_are_disclosive``.
    output_policy_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    #: Resource limits of the project's workspaces (None: the spawner's defaults).
    cpu_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    mem_limit: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: Seconds a workspace of the project may go without activity through the proxy before
    #: it is stopped (revision 0010; None: the ``sde`` service's ``idle_timeout``).
    idle_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: May the public register name the project's researchers? (revision 0009; default no:
    #: they are shown by organisation only.)
    register_names: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())

    agreements: Mapped[list[Agreement]] = relationship(
        back_populates="project", order_by="Agreement.starts_on"
    )
    memberships: Mapped[list[Membership]] = relationship(back_populates="project")

    @property
    def output_policy(self) -> dict:
        return json.loads(self.output_policy_json or "{}")

    @output_policy.setter
    def output_policy(self, value: dict) -> None:
        self.output_policy_json = json.dumps(dict(value), sort_keys=True)


class Agreement(Base):
    """A signed data sharing / access agreement covering a project for a period."""

    __tablename__ = "agreement"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    reference: Mapped[str] = mapped_column(String(100))
    signed_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    data_deletion_on: Mapped[date] = mapped_column(Date)

    project: Mapped[Project] = relationship(back_populates="agreements")
    __table_args__ = (UniqueConstraint("project_id", "reference"),)


class Membership(Base):
    __tablename__ = "membership"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(_enum(Role))

    person: Mapped[Person] = relationship(back_populates="memberships")
    project: Mapped[Project] = relationship(back_populates="memberships")
    grants: Mapped[list[Grant]] = relationship(
        back_populates="membership", cascade="all, delete-orphan", passive_deletes=True
    )
    __table_args__ = (UniqueConstraint("person_id", "project_id", "role"),)


class Dataset(Base):
    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    source_path: Mapped[str] = mapped_column(Text)  # CSV or Parquet file on the hub host
    #: The person-identifier column (an NHS number): opt-outs are removed by it and it is
    #: replaced by a per-project pseudonym in every extract. None: no person-level data.
    identifier_column: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Grant(Base):
    """The minimum dataset of one membership: which columns and rows of one dataset."""

    __tablename__ = "grant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    membership_id: Mapped[int] = mapped_column(ForeignKey("membership.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    columns_json: Mapped[str] = mapped_column(Text, default="[]")
    row_filter: Mapped[str] = mapped_column(Text, default="")

    membership: Mapped[Membership] = relationship(back_populates="grants")
    dataset: Mapped[Dataset] = relationship()
    __table_args__ = (UniqueConstraint("membership_id", "dataset_id"),)

    @property
    def columns(self) -> list[str]:
        return json.loads(self.columns_json)

    @columns.setter
    def columns(self, value: list[str]) -> None:
        self.columns_json = json.dumps(list(value))


class Workspace(Base):
    """A started workspace: which (person, JupyterHub server) is working on which project.

    Written by the spawner on start and stop; services read it to turn a workspace's server
    token into (person, project), and the lifecycle sweep to find rooms to close.
    """

    __tablename__ = "workspace"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    server_name: Mapped[str] = mapped_column(String(255), default="")
    project_slug: Mapped[str] = mapped_column(String(40), index=True)
    container: Mapped[str] = mapped_column(String(200))
    #: The container's IP on its workspace network: its server token is accepted from there
    #: only (a token copied out of the room is useless elsewhere).
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class WorkspaceUsage(Base):
    """What one workspace's container used (revision 0010), metered by the ``sde`` service
    (:mod:`sde_spawner.usage`): CPU seconds as the container's own cumulative counter last
    read, memory byte-seconds as the sampled memory in use times the time between samples."""

    __tablename__ = "workspace_usage"

    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspace.id", ondelete="CASCADE"), primary_key=True
    )
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    memory_byte_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    memory_peak_bytes: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), default=0, server_default="0"
    )
    samples: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sampled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# ---- safe data: opt-out lists, project data policy, extract versions ------------------------
class OptoutList(Base):
    """One load of an opt-out list (``national`` or ``local:NAME``). Loads are never changed:
    each is a new version, and the list in force is the latest version."""

    __tablename__ = "optout_list"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), index=True)
    version: Mapped[int] = mapped_column(Integer)
    entries: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))  # of the sorted, distinct numbers
    source_name: Mapped[str] = mapped_column(String(300), default="")
    loaded_by: Mapped[str] = mapped_column(String(100), default="")
    loaded_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("name", "version"),)


class OptoutEntry(Base):
    """One NHS number on one version of an opt-out list."""

    __tablename__ = "optout_entry"

    list_id: Mapped[int] = mapped_column(
        ForeignKey("optout_list.id", ondelete="CASCADE"), primary_key=True
    )
    nhs_number: Mapped[str] = mapped_column(String(10), primary_key=True)


class ProjectDataPolicy(Base):
    """A project's data policy: which local opt-out lists apply (the national list always
    does) and whether extracts come as CSV besides Parquet."""

    __tablename__ = "project_data_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), unique=True
    )
    local_optouts_json: Mapped[str] = mapped_column(Text, default="[]")
    write_csv: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def local_optouts(self) -> list[str]:
        return json.loads(self.local_optouts_json)

    @local_optouts.setter
    def local_optouts(self, value: list[str]) -> None:
        self.local_optouts_json = json.dumps(sorted(set(value)))


class ExtractVersion(Base):
    """One immutable build of one member's extract on one project, with its counts."""

    __tablename__ = "extract_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_slug: Mapped[str] = mapped_column(String(40), index=True)
    username: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    directory: Mapped[str] = mapped_column(Text)
    built_at: Mapped[datetime] = mapped_column(DateTime)
    details_json: Mapped[str] = mapped_column(Text, default="{}")
    __table_args__ = (UniqueConstraint("project_slug", "username", "version"),)

    @property
    def details(self) -> dict:
        return json.loads(self.details_json)


# ---- breaches, deletion certificates, the register's name flag (revision 0009) -------------
class Sanction(enum.StrEnum):
    """What a recorded breach of the agreement costs the person."""

    warning = "warning"
    suspension = "suspension"  # the person is suspended (every room of theirs closes)
    removal = "removal"  # the person is taken off the project


class Breach(Base):
    """A breach of a project's agreement by a person, and the sanction it drew."""

    __tablename__ = "breach"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    project_slug: Mapped[str] = mapped_column(String(40), index=True)
    occurred_on: Mapped[date] = mapped_column(Date)
    what: Mapped[str] = mapped_column(Text)
    sanction: Mapped[Sanction] = mapped_column(_enum(Sanction))
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class DeletionCertificate(Base):
    """A signed record of what was deleted at a project's data-deletion date.

    ``body`` is the canonical JSON that ``signature`` (base64 Ed25519, the service's release
    signing key) covers; the other columns repeat parts of it for listing.
    """

    __tablename__ = "deletion_certificate"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_slug: Mapped[str] = mapped_column(String(40), index=True)
    agreement_reference: Mapped[str] = mapped_column(String(100))
    run_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    body: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    public_key: Mapped[str] = mapped_column(Text)
