"""`intake_applied`: the callback intake journal's entries applied to this database (store.intake).
Each entry is applied in one transaction with its row here, so a crash never applies one twice."""
from peewee import BigIntegerField, CharField, Model


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.models.
    class IntakeApplied(Model):
        journal = CharField(primary_key=True)
        seq = BigIntegerField()

        class Meta:
            database = db
            table_name = 'intake_applied'

    return [IntakeApplied]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
