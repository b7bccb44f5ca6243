"""`callback_failure`: the last verification and callback requests answered with an error, for `wecomd doctor`."""
from peewee import CharField, DateTimeField, IntegerField, Model, TextField


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.failures.
    class CallbackFailure(Model):
        at = DateTimeField()
        app = CharField()
        kind = CharField()
        status = IntegerField()
        category = CharField()
        reason = TextField()
        remote_ip = CharField(null=True)
        skipped = IntegerField(default=0)

        class Meta:
            database = db
            table_name = 'callback_failure'

    return [CallbackFailure]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
