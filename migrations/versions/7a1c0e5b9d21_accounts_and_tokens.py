"""Accounts, personal API tokens, and the account each study belongs to.

As the earlier revisions do, only what is missing is created, so a database that
``create_all`` made from newer models is taken over. Existing studies get no owner:
they stay open to whoever holds their id, as they were.

Revision ID: 7a1c0e5b9d21
Revises: 3d5857e8f50f
Create Date: 2026-12-03 18:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision = "7a1c0e5b9d21"
down_revision = "3d5857e8f50f"
branch_labels = None
depends_on = None

OWNER_INDEX = "ix_studies_owner_id"


def users():
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=True),
        sa.Column("subject", sa.String(length=512), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("next_login_at", sa.DateTime(), nullable=True),
        sa.Column("signed_out_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("subject"),
    ]


def api_tokens():
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    ]


def upgrade():
    if op.get_context().as_sql:  # `flask db upgrade --sql`: nothing to inspect
        tables, study_columns, study_indexes = set(), set(), set()
    else:
        inspector = sa.inspect(op.get_bind())
        tables = set(inspector.get_table_names())
        study_columns = {column["name"] for column in inspector.get_columns("studies")}
        study_indexes = {index["name"] for index in inspector.get_indexes("studies")}
    if "users" not in tables:
        op.create_table("users", *users())
    if "api_tokens" not in tables:
        op.create_table("api_tokens", *api_tokens())
        op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"], unique=False)
    if "owner_id" in study_columns and OWNER_INDEX in study_indexes:
        return
    with op.batch_alter_table("studies") as batch:
        if "owner_id" not in study_columns:
            batch.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        if OWNER_INDEX not in study_indexes:
            batch.create_index(OWNER_INDEX, ["owner_id"], unique=False)


def downgrade():
    with op.batch_alter_table("studies") as batch:
        batch.drop_index(OWNER_INDEX)
        batch.drop_column("owner_id")
    op.drop_index("ix_api_tokens_user_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
