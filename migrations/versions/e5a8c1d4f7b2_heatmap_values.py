"""Heatmaps keep the Grad-CAM map itself (0..1, float32 ``.npy``) beside the PNG overlay,
so the PACS write-back can encode the values (Parametric Map, fractional Segmentation)
rather than a picture of them.

Only a missing column is added (a database that ``create_all`` made from newer models
is taken over). Heatmaps stored before this revision have none: ``cam`` stays null.

Revision ID: e5a8c1d4f7b2
Revises: c7d1e3f5a902
Create Date: 2026-12-04 22:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "e5a8c1d4f7b2"
down_revision = "c7d1e3f5a902"
branch_labels = None
depends_on = None


def upgrade():
    if not op.get_context().as_sql:
        have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("study_heatmaps")}
        if "cam" in have:
            return
    with op.batch_alter_table("study_heatmaps") as batch:
        batch.add_column(sa.Column("cam", sa.LargeBinary(), nullable=True))


def downgrade():
    with op.batch_alter_table("study_heatmaps") as batch:
        batch.drop_column("cam")
