"""Studies remember their PACS write-back: failed tries, the last failure, and when
workers' housekeeping may queue it again (null: no write-back wanted).

Only what is missing is added, so a database that ``create_all`` made from newer
models is taken over as the first revision takes over older ones. Existing rows get
no write-back: ``write_after`` stays null.

Revision ID: 3d5857e8f50f
Revises: 0f06d25a1b53
Create Date: 2026-12-02 09:30:00.000000
"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = "3d5857e8f50f"
down_revision = "0f06d25a1b53"
branch_labels = None
depends_on = None

INDEX = "ix_studies_write_after"


def columns():
    return [
        # server_default: rows stored before this revision need a value.
        sa.Column("write_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("write_after", sa.DateTime(), nullable=True),
        sa.Column("write_error", sa.String(length=300), nullable=True),
    ]


def upgrade():
    if op.get_context().as_sql:  # `flask db upgrade --sql`: nothing to inspect
        have, indexes = set(), set()
    else:
        inspector = sa.inspect(op.get_bind())
        have = {column["name"] for column in inspector.get_columns("studies")}
        indexes = {index["name"] for index in inspector.get_indexes("studies")}
    missing = [column for column in columns() if column.name not in have]
    if not missing and INDEX in indexes:
        return
    with op.batch_alter_table("studies") as batch:
        for column in missing:
            batch.add_column(column)
        if INDEX not in indexes:
            batch.create_index(INDEX, ["write_after"], unique=False)


def downgrade():
    with op.batch_alter_table("studies") as batch:
        batch.drop_index(INDEX)
        for column in reversed(columns()):
            batch.drop_column(column.name)
