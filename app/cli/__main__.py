"""``python -m app.cli ...`` (what ``torchrun -m app.cli train|index`` runs): the ``biomedsearch`` command."""

from __future__ import annotations

from app.cli import main

main()
