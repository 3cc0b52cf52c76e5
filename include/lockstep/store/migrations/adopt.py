"""Operations for the revisions that also adopt a database made by ``create_all``.

Before migrations, every first use of a database ran ``metadata.create_all`` (tables that
were missing, with their indexes) and then added columns newer than the table. Such a
database has Lockstep's tables but no version row, and any mix of the objects of
revisions 0001 to 0003, depending on the releases that touched it. Adopting it means
running those revisions with each object created only when it is missing; the
runner sets ``ADOPT`` for exactly that case. A fresh database, or one already under
migrations, runs them as plain operations (an object that is unexpectedly there is an
error, as it should be). 0003 (the recommender's tables) only creates tables, so it
uses these operations too; later revisions that alter objects use ``op`` directly.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from lockstep.store.migrations.runner import ADOPT


def adopting() -> bool:
    """True while the runner adopts an unversioned database (never in offline SQL mode)."""
    return bool(context.config.attributes.get(ADOPT)) and not context.is_offline_mode()


def create_table(name: str, *columns: sa.Column | sa.Constraint) -> None:
    if adopting() and sa.inspect(op.get_bind()).has_table(name):
        return
    op.create_table(name, *columns)


def create_index(name: str, table: str, columns: list[str]) -> None:
    if adopting() and name in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}:
        return
    op.create_index(name, table, columns, unique=False)


def add_column(table: str, column: sa.Column) -> None:
    if adopting() and column.name in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}:
        return
    op.add_column(table, column)
