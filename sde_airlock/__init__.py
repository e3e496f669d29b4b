"""The airlock's rules: pure code imported by both the workspace extension and the hub service.

``sde_airlock`` has no dependency on either side (``egress_extension`` in the workspace,
``sde_spawner`` on the hub) and does no I/O of its own, so the researcher's early feedback and
the service's decision are the same functions on the same defaults:

* :mod:`sde_airlock.rules` — which files may leave and what an export request must look like
  (allowed types, size and count limits, text lengths), as :class:`~sde_airlock.rules.ExportRules`
  read from the ``SDE_EXPORT_*`` settings; every check returns every problem it finds.
* :mod:`sde_airlock.filetypes` — what a file's bytes really are (magic numbers, image
  structure, UTF-8 text, JSON, notebooks), streamed, whatever the file's name says.

The workspace's checks are a courtesy; the service runs the same ones and is the authority.
"""
