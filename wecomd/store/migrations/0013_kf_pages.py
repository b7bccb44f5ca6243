"""微信客服: `kf_page`, each sync_msg page committed with its cursor (in the same transaction) and then
stored as messages a slice at a time (wecomd.kf.pull) and deleted with its last slice; a crash
between the two leaves the page here, and the next pull stores it (again: each message once)."""
from peewee import CharField, DateTimeField, Model, TextField


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.models.
    class KfPage(Model):
        app = CharField()
        open_kfid = CharField()
        items = TextField()
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'kf_page'

    return [KfPage]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
