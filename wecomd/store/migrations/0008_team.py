"""The team console (issue #11): operator accounts, their API tokens, the audit log, the contact
directory's cache, conversation assignment and state, internal notes and quick replies. New tables
only: nothing existing changes, so an older wecomd reading this database sees what it knew."""
from peewee import CharField, DateTimeField, IntegerField, Model, TextField


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.models.
    class Operator(Model):
        name = CharField(unique=True)
        role = CharField()
        apps = TextField(null=True)
        password_hash = TextField()
        disabled = IntegerField(default=0)
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'operator'

    class ApiToken(Model):
        token_hash = CharField(unique=True)
        operator = CharField(index=True)
        label = CharField(null=True)
        created_by = CharField()
        created_at = DateTimeField()
        last_used_at = DateTimeField(null=True)
        revoked_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = 'api_token'

    class AuditEvent(Model):
        at = DateTimeField(index=True)
        actor = CharField(index=True)
        action = CharField(index=True)
        target = TextField(null=True)
        detail = TextField(null=True)
        client = CharField(null=True)

        class Meta:
            database = db
            table_name = 'audit'

    class Contact(Model):
        corp_id = CharField()
        userid = CharField()
        name = CharField(null=True)
        departments = TextField(null=True)
        position = CharField(null=True)
        errcode = IntegerField(null=True)
        error = TextField(null=True)
        fetched_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'contact'
            indexes = ((('corp_id', 'userid'), True), (('name',), False))

    class ConversationState(Model):
        app = CharField()
        user = CharField()
        assignee = CharField(null=True)
        state = CharField(default='open')
        updated_at = DateTimeField()
        updated_by = CharField(null=True)

        class Meta:
            database = db
            table_name = 'conversation_state'
            indexes = ((('app', 'user'), True), (('assignee',), False))

    class Note(Model):
        app = CharField()
        user = CharField()
        author = CharField()
        text = TextField()
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'note'
            indexes = ((('app', 'user', 'id'), False),)

    class QuickReply(Model):
        shortcut = CharField()
        text = TextField()
        owner = CharField(null=True)
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'quick_reply'
            indexes = ((('owner', 'shortcut'), False),)

    return [Operator, ApiToken, AuditEvent, Contact, ConversationState, Note, QuickReply]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
