"""Taking a row for one worker, the way studies, contact mail and PACS write-backs all
do: one conditional UPDATE, so that among workers racing for the same row exactly one
wins, with no lock held between them."""

from __future__ import annotations

from extensions import db


def won(statement) -> bool:
    """Run a conditional UPDATE and commit it; True when it changed exactly one row,
    i.e. when this caller took the row."""
    result = db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount == 1
