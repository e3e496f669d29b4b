"""Output checking: export requests from workspaces, independent human review, signed release.

The flow (states and who may move them are data in :mod:`.states`)::

    workspace (server token)                 checkers (browser login)          requester (browser)
    POST api/exports  -> draft
    PUT  api/exports/{id}/files/{i}  (bytes snapshotted into the blob store, sha256 checked)
    POST api/exports/{id}/submit -> submitted
                                  checking/ queue, claim -> in_review
                                  per-file decisions; after ``required_approvals`` distinct
                                  checkers -> approved | rejected | returned
                                                                      releases/ download
                                                                      -> released (+ signed
                                                                      manifest)

Modules: :mod:`.states` (transition table), :mod:`.models` (tables), :mod:`.logic` (the one
layer that changes state and writes the audit row with it), :mod:`.storage` (content-addressed
blobs), :mod:`.render` (safe previews), :mod:`.manifest` (signed release manifests),
:mod:`.handlers` (thin tornado handlers mounted by :mod:`sde_spawner.services.app`).
"""
