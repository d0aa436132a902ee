"""BiomedSearch training: BiomedCLIP-style encoders (open_clip), tokenizer, training, export, evaluation.

Imports neither ``indexer`` nor ``app``; never reads the environment.
"""
