"""BiomedSearch indexer: PMC articles -> figure catalogue -> embeddings -> FAISS indexes.

Never reads the environment: callers pass paths, URLs and sizes (see ``app.config.Settings``).
"""
