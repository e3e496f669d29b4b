"""Imports: the airlock's other door, files coming *into* a project's workspaces.

A project member uploads files with a justification from the ``sde`` service's pages, outside
the workspace (:mod:`.handlers`); the upload is confined by the airlock's import rules and
byte inspector (:mod:`sde_airlock.imports`) and stored in the same write-once blob store as
export snapshots. A checker of the project who is not the requester reviews each request
(one approval by default; ``import_required_approvals`` in the project's output policy may ask
for more). :mod:`.states` is the state table, :mod:`.logic` the one layer that changes
requests (writing each audit row in the same transaction), and :mod:`.materialise` lays the
approved files of a project out, read-only, in the directory the spawner bind-mounts at
``/imports`` when a workspace starts.
"""
