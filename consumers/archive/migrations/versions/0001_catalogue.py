"""Catalogue: programs, users, tokens, exposures, products, reprocess requests, engineering samples.

Revision ID: 0001
Revises: 
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('eng_samples',
    sa.Column('parameter', sa.String(length=64), nullable=False),
    sa.Column('t', sa.Float(precision=53), nullable=False),
    sa.Column('raw', sa.Float(precision=53), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=False),
    sa.Column('apid', sa.SmallInteger(), nullable=False),
    sa.PrimaryKeyConstraint('parameter', 't')
    )
    op.create_table('programs',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('pi', sa.String(length=64), nullable=True),
    sa.Column('period_months', sa.SmallInteger(), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.CheckConstraint('period_months IN (0, 3, 6, 12)', name='ck_programs_period'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('staff', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('exposures',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('program_id', sa.Integer(), nullable=False),
    sa.Column('observation', sa.Integer(), nullable=False),
    sa.Column('visit', sa.Integer(), nullable=False),
    sa.Column('instrument', sa.String(length=16), nullable=False),
    sa.Column('detector', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('exp_type', sa.String(length=32), nullable=False),
    sa.Column('readpatt', sa.String(length=32), nullable=False),
    sa.Column('start_time', sa.DateTime(), nullable=True),
    sa.Column('end_time', sa.DateTime(), nullable=True),
    sa.Column('l0_version', sa.Integer(), nullable=False),
    sa.Column('l0_complete', sa.Boolean(), nullable=False),
    sa.Column('l0_missing_packets', sa.Integer(), nullable=False),
    sa.Column('l0_sha256', sa.String(length=64), nullable=False),
    sa.Column('l0_received', sa.DateTime(), nullable=True),
    sa.Column('uncal_path', sa.String(length=1024), nullable=False),
    sa.Column('uncal_sha256', sa.String(length=64), nullable=False),
    sa.Column('first_calibrated', sa.DateTime(), nullable=True),
    sa.Column('release_date', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['program_id'], ['programs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exposures_detector'), ['detector'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_instrument'), ['instrument'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_program_id'), ['program_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_start_time'), ['start_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_target'), ['target'], unique=False)

    op.create_table('memberships',
    sa.Column('program_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['program_id'], ['programs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('program_id', 'user_id')
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_user_id'), ['user_id'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('expires', sa.DateTime(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('products',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=96), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('exposure_id', sa.String(length=40), nullable=True),
    sa.Column('program_id', sa.Integer(), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('suffix', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('store_path', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('pipeline_version', sa.String(length=32), nullable=False),
    sa.Column('context', sa.String(length=64), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('release_date', sa.DateTime(), nullable=True),
    sa.Column('superseded_by', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], ),
    sa.ForeignKeyConstraint(['program_id'], ['programs.id'], ),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('name', 'sha256', name='uq_products_name_sha256'),
    sa.UniqueConstraint('name', 'version', name='uq_products_name_version')
    )
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_products_exposure_id'), ['exposure_id'], unique=False)
        batch_op.create_index('ix_products_latest', ['superseded_by', 'level'], unique=False)
        batch_op.create_index(batch_op.f('ix_products_level'), ['level'], unique=False)
        batch_op.create_index(batch_op.f('ix_products_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_products_program_id'), ['program_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_products_release_date'), ['release_date'], unique=False)

    op.create_table('reprocess_requests',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('exposure_id', sa.String(length=40), nullable=False),
    sa.Column('context', sa.String(length=64), nullable=False),
    sa.Column('pipeline_version', sa.String(length=32), nullable=False),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('requested', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('exposure_id', 'context', 'pipeline_version', name='uq_reprocess_target')
    )
    with op.batch_alter_table('reprocess_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reprocess_requests_exposure_id'), ['exposure_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('reprocess_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reprocess_requests_exposure_id'))

    op.drop_table('reprocess_requests')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_products_release_date'))
        batch_op.drop_index(batch_op.f('ix_products_program_id'))
        batch_op.drop_index(batch_op.f('ix_products_name'))
        batch_op.drop_index(batch_op.f('ix_products_level'))
        batch_op.drop_index('ix_products_latest')
        batch_op.drop_index(batch_op.f('ix_products_exposure_id'))

    op.drop_table('products')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_user_id'))

    op.drop_table('tokens')
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_user_id'))

    op.drop_table('memberships')
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exposures_target'))
        batch_op.drop_index(batch_op.f('ix_exposures_start_time'))
        batch_op.drop_index(batch_op.f('ix_exposures_program_id'))
        batch_op.drop_index(batch_op.f('ix_exposures_instrument'))
        batch_op.drop_index(batch_op.f('ix_exposures_detector'))

    op.drop_table('exposures')
    op.drop_table('users')
    op.drop_table('programs')
    op.drop_table('eng_samples')
