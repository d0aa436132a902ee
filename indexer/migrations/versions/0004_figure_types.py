"""figure types and the multi-panel flag: figure_labels (per figure and model) and the current label on figures

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00

Columns are added with plain ``ALTER TABLE ... ADD COLUMN`` (no batch copy of ``figures``, which
would drop the lexical index's triggers on SQLite). Existing figures stay unlabelled (NULL) until the
pipeline's ``label`` stage runs (``biomedsearch index`` or the next re-index job).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('figures', sa.Column('figure_type', sa.String(length=32), nullable=True))
    op.add_column('figures', sa.Column('type_confidence', sa.Float(), nullable=True))
    op.add_column('figures', sa.Column('type_model', sa.String(length=200), nullable=True))
    op.add_column('figures', sa.Column('multipanel', sa.Boolean(), nullable=True))
    op.add_column('figures', sa.Column('multipanel_evidence', sa.String(length=16), nullable=True))
    op.create_index('ix_figures_figure_type', 'figures', ['figure_type'], unique=False)
    op.create_index('ix_figures_multipanel', 'figures', ['multipanel'], unique=False)
    op.create_table(
        'figure_labels',
        sa.Column('figure_id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.String(length=200), nullable=False),
        sa.Column('classifier', sa.String(length=32), nullable=False),
        sa.Column('figure_type', sa.String(length=32), nullable=False),
        sa.Column('confidence', sa.Float(), nullable=False),
        sa.Column('image_used', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['figure_id'], ['figures.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('figure_id', 'model_id'),
    )


def downgrade() -> None:
    op.drop_table('figure_labels')
    op.drop_index('ix_figures_multipanel', table_name='figures')
    op.drop_index('ix_figures_figure_type', table_name='figures')
    for column in ('multipanel_evidence', 'multipanel', 'type_model', 'type_confidence', 'figure_type'):
        op.drop_column('figures', column)
