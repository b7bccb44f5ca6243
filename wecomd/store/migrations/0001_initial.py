"""Initial schema: the `message` table that holds every inbound and outbound message."""
from peewee import (BigIntegerField, CharField, DateTimeField, IntegerField, Model,
                    TextField)


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, deliberately independent of
    # wecomd.store: later changes to the app models must not change what 0001 creates.
    class Message(Model):
        app = CharField()
        direction = CharField(max_length=3)
        dedup_key = TextField(null=True, unique=True)
        user = CharField(null=True)
        msgtype = CharField(index=True)
        event = CharField(null=True)
        event_key = TextField(null=True)
        from_user = CharField(null=True)
        to_user = CharField(null=True)
        agent_id = CharField(null=True)
        msg_id = CharField(null=True)
        create_time = BigIntegerField(null=True)
        received_at = DateTimeField(index=True)
        content = TextField(null=True)
        status = CharField()
        error = TextField(null=True)
        fields = TextField(default='{}')
        raw_xml = TextField(column_name='raw', default='')  # `raw` would shadow Model.raw()
        reply = TextField(null=True)
        deliveries = IntegerField(default=1)
        operator = CharField(null=True)
        wecom_msgid = CharField(null=True)
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'message'
            indexes = (
                (('app', 'user', 'id'), False),
                (('direction', 'status'), False),
            )

    return [Message]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
