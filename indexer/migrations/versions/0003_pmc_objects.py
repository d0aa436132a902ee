"""pmc_objects: the PMC Cloud metadata objects a fetch has seen (key, ETag, outcome)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pmc_objects',
        sa.Column('key', sa.String(length=300), nullable=False),
        sa.Column('etag', sa.String(length=100), nullable=False),
        sa.Column('pmcid', sa.String(length=32), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('license_code', sa.String(length=100), nullable=True),
        sa.Column('last_modified', sa.DateTime(timezone=True), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index('ix_pmc_objects_pmcid', 'pmc_objects', ['pmcid'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_pmc_objects_pmcid', table_name='pmc_objects')
    op.drop_table('pmc_objects')
