"""The DICOM node's staging: studies arriving by C-STORE and their de-identified
instances, until the study is stable and analysed.

Revision ID: f1b2c3d4e5a6
Revises: e5a8c1d4f7b2
Create Date: 2026-12-04 22:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "f1b2c3d4e5a6"
down_revision = "e5a8c1d4f7b2"
branch_labels = None
depends_on = None


def upgrade():
    tables = set() if op.get_context().as_sql else set(
        sa.inspect(op.get_bind()).get_table_names())
    if "node_arrivals" not in tables:
        op.create_table(
            "node_arrivals",
            sa.Column("study_uid", sa.String(length=128), nullable=False),
            sa.Column("modality", sa.String(length=16), nullable=False),
            sa.Column("calling_ae", sa.String(length=16), nullable=False),
            sa.Column("images", sa.Integer(), nullable=False),
            sa.Column("bytes", sa.Integer(), nullable=False),
            sa.Column("changed_at", sa.DateTime(), nullable=False),
            sa.Column("study_id", sa.String(length=64), nullable=True),
            sa.Column("patient", sa.LargeBinary(), nullable=True),
            sa.PrimaryKeyConstraint("study_uid"))
    if "node_instances" not in tables:
        op.create_table(
            "node_instances",
            sa.Column("sop_uid", sa.String(length=128), nullable=False),
            sa.Column("study_uid", sa.String(length=128), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.Column("received_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["study_uid"], ["node_arrivals.study_uid"],
                                    ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("sop_uid"))
        op.create_index("ix_node_instances_study_uid", "node_instances", ["study_uid"])


def downgrade():
    op.drop_table("node_instances")
    op.drop_table("node_arrivals")
