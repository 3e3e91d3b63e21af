"""At most one analysis of a PACS study queued or running at a time: a unique partial
index on studies.pacs_study_uid, so that two requests arriving together cannot both
start one (the second's INSERT fails and it follows the first).

A database that already holds such twins (made by that race) keeps the newest of each
PACS study's queued or running analyses; the others are marked failed, with a message
saying why, before the index is built.

Revision ID: 7d2908577004
Revises: f1b2c3d4e5a6
Create Date: 2026-12-06 10:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "7d2908577004"
down_revision = "f1b2c3d4e5a6"
branch_labels = None
depends_on = None

INDEX = "ix_studies_one_running_per_pacs_study"
RUNNING = "source = 'pacs' AND status IN ('queued', 'running')"
TWINS_FAILED = sa.text(f"""
UPDATE studies SET status = 'failed', error_code = 'duplicate_analysis',
       error_message = :message, claim_token = NULL, claimed_until = NULL
WHERE {RUNNING} AND EXISTS (
    SELECT 1 FROM studies AS newer
    WHERE newer.pacs_study_uid = studies.pacs_study_uid
      AND newer.source = 'pacs' AND newer.status IN ('queued', 'running')
      AND (newer.created_at > studies.created_at
           OR (newer.created_at = studies.created_at AND newer.id > studies.id)))
""")
MESSAGE = ("Another analysis of the same PACS study was started at the same time; "
           "that one goes on.")


def upgrade():
    if not op.get_context().as_sql:
        indexes = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("studies")}
        if INDEX in indexes:  # a database made by create_all already has it
            return
    op.execute(TWINS_FAILED.bindparams(message=MESSAGE))
    op.create_index(INDEX, "studies", ["pacs_study_uid"], unique=True,
                    sqlite_where=sa.text(RUNNING), postgresql_where=sa.text(RUNNING))


def downgrade():
    op.drop_index(INDEX, table_name="studies")
