"""The web UI (templates, static files and the page router)."""
