"""Automatic replies as messages: `message.automatic` and `message.rule` mark an outbound row that a
rule or the app's own `reply =` sent (passive, in a callback's answer, or later through the API).

Rows the outbox sent for a rule before this migration carry the operator "rule:NAME": they are
marked as automatic answers sent through the API. Passive replies sent before it were never stored
as messages, so they stay invisible.
"""
from peewee import CharField, Model, fn


# A frozen copy of the columns this migration adds to `message`; nullable, so SQLite adds them with
# one ALTER TABLE each and never rebuilds the table (its triggers and search index stay).
def _columns():
    return [
        ("automatic", CharField(null=True)),  # NULL: not automatic; "passive" or "api"
        ("rule", CharField(null=True)),  # the rule's name; NULL for the app's own reply
    ]


def _frozen_message(db):
    class Message(Model):
        direction = CharField()
        operator = CharField(null=True)
        automatic = CharField(null=True)
        rule = CharField(null=True)

        class Meta:
            database = db
            table_name = 'message'

    return Message


def up(migrator, db):
    migrator.migrate(*[migrator.add_column('message', name, field) for name, field in _columns()])
    message = _frozen_message(db)
    earlier = (message.direction == 'out') & (fn.SUBSTR(message.operator, 1, 5) == 'rule:')
    message.update(automatic='api', rule=fn.SUBSTR(message.operator, 6)).where(earlier).execute()


def down(migrator, db):
    migrator.migrate(*[migrator.drop_column('message', name) for name, _ in _columns()])
