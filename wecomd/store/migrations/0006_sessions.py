"""`session`: the dashboard's sign-ins, so that signing out ends a session on the server (a copied cookie
stops working) and a session names its user (one row per sign-in, whichever operator it is)."""
from peewee import CharField, DateTimeField, Model


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.sessions.
    class Session(Model):
        token_hash = CharField(unique=True)
        user = CharField()
        credential = CharField()
        client = CharField(null=True)
        created_at = DateTimeField()
        expires_at = DateTimeField(index=True)

        class Meta:
            database = db
            table_name = 'session'

    return [Session]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
