"""微信客服: `kf_page`, each sync_msg page committed with its cursor (in the same transaction) and then
stored as messages a slice at a time (wecomd.kf.pull); a crash between the two leaves the page
here, and the next pull stores the rest of it."""
from peewee import CharField, DateTimeField, IntegerField, Model, TextField


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.models.
    class KfPage(Model):
        app = CharField()
        open_kfid = CharField()
        items = TextField()
        total = IntegerField()
        done = IntegerField(default=0)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'kf_page'

    return [KfPage]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
