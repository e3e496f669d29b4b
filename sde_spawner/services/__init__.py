"""The hub-side JupyterHub service ``sde``: output checking pages and APIs, audit ingestion."""
