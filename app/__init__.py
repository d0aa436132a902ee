"""BiomedSearch service: FastAPI app, web UI, durable re-index jobs and the `biomedsearch` CLI."""
