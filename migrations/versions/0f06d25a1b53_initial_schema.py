"""Initial schema: contact messages, studies and their parts, PACS arrivals.

Databases made before migrations existed (by ``create_all`` at start) have some of
these tables, possibly without columns added since: this revision creates only the
tables and indexes that are missing and adds the missing columns, keeping every row.
Column types and nullability are those of the models; defaults are set by the app,
except where an added NOT NULL column must fill rows that already exist.

Revision ID: 0f06d25a1b53
Revises:
Create Date: 2026-11-27 10:16:03.327026
"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = "0f06d25a1b53"
down_revision = None
branch_labels = None
depends_on = None


def contact_messages():
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("phone", sa.String(length=40), nullable=True),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("subject", sa.String(length=150), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("forwarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("forward_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    ]


def pacs_arrivals():
    return [
        sa.Column("study_uid", sa.String(length=128), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("study_id", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("study_uid"),
    ]


def studies():
    return [
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("explain", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("pacs_study_uid", sa.String(length=128), nullable=True),
        sa.Column("written", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    ]


def study_files():
    return [
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("study_id", "index"),
    ]


def study_heatmaps():
    return [
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(length=32), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("study_id", "index", "architecture"),
    ]


def study_images():
    return [
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("series_uid", sa.String(length=128), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("combined", sa.JSON(), nullable=True),
        sa.Column("covid_probability", sa.Float(), nullable=True),
        sa.Column("positive", sa.Boolean(), nullable=True),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("study_id", "index"),
    ]


# Parents before children; each table with its indexes (name, columns).
TABLES = [
    ("contact_messages", contact_messages, [
        ("ix_contact_messages_created_at", ["created_at"]),
        ("ix_contact_messages_forwarded_at", ["forwarded_at"])]),
    ("pacs_arrivals", pacs_arrivals, []),
    ("studies", studies, [
        ("ix_studies_claimed_until", ["claimed_until"]),
        ("ix_studies_pacs_study_uid", ["pacs_study_uid"]),
        ("ix_studies_status", ["status"])]),
    ("study_files", study_files, []),
    ("study_heatmaps", study_heatmaps, []),
    ("study_images", study_images, []),
]
# What rows stored before a NOT NULL column existed hold in it: the model's default.
FILL = {("studies", "source"): "upload"}


def upgrade():
    if op.get_context().as_sql:  # `flask db upgrade --sql`: the SQL for a new database
        inspector, present = None, set()
    else:
        inspector = sa.inspect(op.get_bind())
        present = set(inspector.get_table_names())
    for table, elements, indexes in TABLES:
        if table not in present:
            op.create_table(table, *elements())
            have_indexes = set()
        else:
            add_missing_columns(table, elements(), inspector)
            have_indexes = {index["name"] for index in inspector.get_indexes(table)}
        for name, columns in indexes:
            if name not in have_indexes:
                op.create_index(name, table, columns, unique=False)


def add_missing_columns(table, elements, inspector):
    """A table made before migrations: add the columns it lacks, filling existing rows."""
    have = {column["name"] for column in inspector.get_columns(table)}
    for column in elements:
        if not isinstance(column, sa.Column) or column.name in have:
            continue
        fill = FILL.get((table, column.name))
        if not column.nullable and fill is None:
            raise RuntimeError(f"{table}.{column.name} cannot be added: no value for "
                               "the rows already stored")
        if fill is not None:
            column = sa.Column(column.name, column.type, nullable=False,
                               server_default=fill)
        op.add_column(table, column)


def downgrade():
    for table, _elements, indexes in reversed(TABLES):
        for name, _columns in indexes:
            op.drop_index(name, table_name=table)
        op.drop_table(table)
