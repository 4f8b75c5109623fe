"""initial verdict log

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_sop_instance_uid'), ['sop_instance_uid'], unique=False)

    op.create_table('labels',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('reviewer', sa.String(length=64), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_labels_sop_instance_uid'), ['sop_instance_uid'], unique=False)

    op.create_table('verdicts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=256), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('frames', sa.Integer(), nullable=True),
    sa.Column('frame_rate_hz', sa.Float(), nullable=True),
    sa.Column('frame_rate_source', sa.String(length=32), nullable=True),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=True),
    sa.Column('source_address', sa.String(length=64), nullable=True),
    sa.Column('file_path', sa.String(length=512), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('received_count', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('model_version', sa.String(length=128), nullable=True),
    sa.Column('reason_code', sa.String(length=32), nullable=True),
    sa.Column('reasons', sa.Text(), nullable=True),
    sa.Column('failed_rules', sa.String(length=256), nullable=True),
    sa.Column('rule_results', sa.JSON(), nullable=True),
    sa.Column('timings_ms', sa.JSON(), nullable=True),
    sa.Column('judge_attempts', sa.Integer(), nullable=False),
    sa.Column('forward_status', sa.String(length=16), nullable=False),
    sa.Column('released_at', sa.DateTime(), nullable=True),
    sa.Column('released_by', sa.String(length=64), nullable=True),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('decided_at', sa.DateTime(), nullable=True),
    sa.Column('forwarded_at', sa.DateTime(), nullable=True),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_verdicts_decision'), ['decision'], unique=False)
        batch_op.create_index(batch_op.f('ix_verdicts_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index('ix_verdicts_status', ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_verdicts_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('forwards',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('verdict_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('destination', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_sent', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['verdict_id'], ['verdicts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('verdict_id', 'destination', name='uq_forwards_verdict_destination')
    )
    with op.batch_alter_table('forwards', schema=None) as batch_op:
        batch_op.create_index('ix_forwards_status_next', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_forwards_verdict_id'), ['verdict_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('forwards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_forwards_verdict_id'))
        batch_op.drop_index('ix_forwards_status_next')

    op.drop_table('forwards')
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_verdicts_study_instance_uid'))
        batch_op.drop_index('ix_verdicts_status')
        batch_op.drop_index(batch_op.f('ix_verdicts_patient_id'))
        batch_op.drop_index(batch_op.f('ix_verdicts_decision'))

    op.drop_table('verdicts')
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labels_sop_instance_uid'))

    op.drop_table('labels')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_sop_instance_uid'))

    op.drop_table('events')

