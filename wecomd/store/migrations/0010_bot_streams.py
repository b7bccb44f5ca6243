"""`bot_stream`: the 智能机器人's streamed answers, one row per stream id, so that WeCom's refresh
polls are answered from the database (after a restart, or by another instance) and a message's
response_url is used at most once."""
from peewee import CharField, DateTimeField, IntegerField, Model, TextField


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.models.
    class BotStream(Model):
        stream_id = CharField(unique=True)
        bot = CharField()
        message_id = IntegerField(index=True)
        content = TextField(default='')
        finished = IntegerField(default=0)
        notice = TextField(null=True)
        source = CharField(null=True)
        feedback_id = CharField(null=True)
        feedback = TextField(null=True)
        response_url = TextField(null=True)
        response_state = CharField(null=True)
        response_error = TextField(null=True)
        deadline_at = DateTimeField()
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'bot_stream'

    return [BotStream]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
