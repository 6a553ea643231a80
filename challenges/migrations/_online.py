"""Index operations that leave the audit table writable on PostgreSQL.

A plain ``CREATE INDEX`` (or ``DROP INDEX``) locks out writes to its table until it
finishes, and on a large audit table every flow would wait for its row meanwhile. On
PostgreSQL these run ``CONCURRENTLY`` (outside a transaction: their migration is not
atomic); elsewhere (SQLite) as any index operation. The loader skips this module: its name
starts with an underscore.

If a concurrent build is interrupted, PostgreSQL keeps an INVALID index of that name: drop
it (``DROP INDEX CONCURRENTLY <name>``) and migrate again.
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db.migrations.operations import AddIndex, RemoveIndex


class _OnPostgresqlOnly:
    """Run the concurrent operation on PostgreSQL, the plain one (``plain``) elsewhere."""

    plain: type

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        operation = super() if schema_editor.connection.vendor == "postgresql" else self._plain()
        operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        operation = super() if schema_editor.connection.vendor == "postgresql" else self._plain()
        operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self):
        # What ``migrate`` and ``sqlmigrate`` print, whatever the database: the concurrent
        # operation's own text ("Concurrently create ...") would be untrue on SQLite.
        return f"{self._plain().describe()} (concurrently on PostgreSQL)"

    def _plain(self):
        return self.plain(**self.deconstruct()[2])


class AddIndexOnline(_OnPostgresqlOnly, AddIndexConcurrently):
    plain = AddIndex


class RemoveIndexOnline(_OnPostgresqlOnly, RemoveIndexConcurrently):
    plain = RemoveIndex
