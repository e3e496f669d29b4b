"""Hub side of the TRE workspace manager: registry, eligibility, locked-room spawner, audit."""

__version__ = "0.1.0"
