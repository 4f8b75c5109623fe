"""spool retention: pruned files recorded on their verdict rows; forward failures counted

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('verdicts') as batch:
        batch.add_column(sa.Column('file_pruned_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('file_pruned_reason', sa.String(length=32), nullable=True))
    with op.batch_alter_table('forwards') as batch:
        batch.add_column(sa.Column('failures', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+ has it): a batch copy of `verdicts` would trip the
    # foreign key `forwards` holds on it.
    op.drop_column('forwards', 'failures')
    op.drop_column('verdicts', 'file_pruned_reason')
    op.drop_column('verdicts', 'file_pruned_at')
