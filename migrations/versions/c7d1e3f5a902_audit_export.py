"""The audit trail's export to an Audit Record Repository: one cursor row.

The events themselves cannot be updated, so what was sent is a row of its own: the
last sequence number the repository read, and the hold of the one sender at a time
(``holder``, ``held_until``, which after a failure is also when to try again).

Revision ID: c7d1e3f5a902
Revises: b4e2c9a7d310
Create Date: 2026-12-04 22:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "c7d1e3f5a902"
down_revision = "b4e2c9a7d310"
branch_labels = None
depends_on = None


def upgrade():
    if not op.get_context().as_sql and sa.inspect(op.get_bind()).has_table("audit_export"):
        return  # a database made by create_all, being taken over (the row comes on use)
    table = op.create_table(
        "audit_export",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sent_seq", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=True),
        sa.Column("held_until", sa.DateTime(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "sent_seq": 0, "failures": 0}])


def downgrade():
    op.drop_table("audit_export")
