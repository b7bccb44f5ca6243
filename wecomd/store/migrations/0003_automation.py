"""Rules and automation: `rule_run` (every action a rule fired, and the webhook queue) and `takeover`."""
from peewee import (CharField, DateTimeField, FloatField, IntegerField, Model, TextField)


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.automation.
    class RuleRun(Model):
        message_id = IntegerField(index=True)
        app = CharField()
        user = CharField(null=True)
        rule = CharField()
        action = CharField()
        status = CharField()
        path = CharField(null=True)
        exit_code = IntegerField(null=True)
        duration_ms = FloatField(null=True)
        output = TextField(null=True)
        error = TextField(null=True)
        reply_message_id = IntegerField(null=True)
        url = TextField(null=True)
        payload = TextField(null=True)
        attempts = IntegerField(default=0)
        next_attempt_at = DateTimeField(null=True)
        started_at = DateTimeField()
        finished_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = 'rule_run'
            indexes = (
                (('rule', 'started_at'), False),
                (('action', 'status', 'next_attempt_at'), False),
            )

    class Takeover(Model):
        app = CharField()
        user = CharField()
        until = DateTimeField()
        operator = CharField(null=True)

        class Meta:
            database = db
            table_name = 'takeover'
            indexes = ((('app', 'user'), True),)

    return [RuleRun, Takeover]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
