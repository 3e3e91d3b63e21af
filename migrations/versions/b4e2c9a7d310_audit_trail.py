"""The audit trail: append-only events chained by hash, and the chain's head.

Triggers refuse UPDATE and DELETE on the events (TRUNCATE too on PostgreSQL), and on
PostgreSQL the role that runs the migration (the application's) gives up its UPDATE,
DELETE and TRUNCATE rights on the table: no route and no bug can rewrite what was done.

Revision ID: b4e2c9a7d310
Revises: 7a1c0e5b9d21
Create Date: 2026-12-04 18:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "b4e2c9a7d310"
down_revision = "7a1c0e5b9d21"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
INDEXED = ("at", "actor_id", "action", "study")
REFUSAL = "audit_events is append-only"

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events
        BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"""
    for verb in ("UPDATE", "DELETE")
]
POSTGRES_TRIGGERS = [
    f"""CREATE OR REPLACE FUNCTION audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$""",
    "DROP TRIGGER IF EXISTS audit_events_no_change ON audit_events",
    "DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events",
    """CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION audit_events_refuse()""",
    """CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse()""",
    "REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM CURRENT_USER",
]


def events():
    return [
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_name", sa.String(length=64), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=True),
        sa.Column("actor_method", sa.String(length=16), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("study", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    ]


def upgrade():
    if op.get_context().as_sql:
        tables = set()
    else:
        tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "audit_head" not in tables:
        head = op.create_table(
            "audit_head",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("hash", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("id"))
        op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    if "audit_events" not in tables:
        op.create_table("audit_events", *events())
        for column in INDEXED:
            op.create_index(f"ix_audit_events_{column}", "audit_events", [column],
                            unique=False)
    postgres = op.get_context().dialect.name == "postgresql"
    for statement in POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade():
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TABLE audit_events")
        op.execute("DROP FUNCTION audit_events_refuse()")
    else:
        op.drop_table("audit_events")
    op.drop_table("audit_head")
