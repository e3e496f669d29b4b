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

Modules: :mod:`.states` (the transition table, as data) and :mod:`.transitions` (the one
function that moves a request and writes its audit row), :mod:`.models` (tables),
:mod:`.permissions` (who may act: the one checker guard ``check_can_review``), :mod:`.policies`
(pure rules), :mod:`.queries` (what may be read), :mod:`.actions` (every change, with its audit
row), :mod:`.errors` (refusals, and the transaction that audits them), :mod:`.storage`
(content-addressed blobs), :mod:`.render` (safe previews), :mod:`.manifest` (signed release
manifests), and the thin tornado handlers mounted by :mod:`sde_spawner.services.app`:
:mod:`.base` (what they share), :mod:`.api` (the workspaces' export API) and :mod:`.pages`
(checkers' and requesters' pages).
"""
