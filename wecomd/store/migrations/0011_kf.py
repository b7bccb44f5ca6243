"""微信客服 (kf): `kf_cursor` (each account's sync_msg cursor, saved with its page's messages, the
pending callback token and the pull lease), `kf_session` (each customer's session state and reply
window), `kf_code` (send_msg_on_event codes, each used once) and `kf_customer` (nicknames)."""
from peewee import CharField, DateTimeField, IntegerField, Model, TextField


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.models.
    class KfCursor(Model):
        open_kfid = CharField(unique=True)
        app = CharField()
        cursor = CharField(null=True)
        token = TextField(null=True)
        token_at = DateTimeField(null=True)
        pending = IntegerField(default=0)
        lease_owner = CharField(null=True)
        lease_until = DateTimeField(null=True)
        pulled_at = DateTimeField(null=True)
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'kf_cursor'

    class KfSession(Model):
        app = CharField()
        open_kfid = CharField()
        external_userid = CharField()
        service_state = IntegerField(null=True)
        servicer_userid = CharField(null=True)
        last_customer_at = DateTimeField(null=True)
        sends = IntegerField(default=0)
        state_at = DateTimeField(null=True)
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'kf_session'
            indexes = ((('open_kfid', 'external_userid'), True),)

    class KfCode(Model):
        code = CharField(unique=True)
        kind = CharField()
        open_kfid = CharField()
        external_userid = CharField(null=True)
        message_id = IntegerField(null=True)
        expires_at = DateTimeField()
        used_at = DateTimeField(null=True)
        used_by = IntegerField(null=True)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'kf_code'

    class KfCustomer(Model):
        external_userid = CharField(unique=True)
        nickname = CharField(null=True)
        avatar = TextField(null=True)
        gender = IntegerField(null=True)
        unionid = CharField(null=True)
        scene = CharField(null=True)
        scene_param = TextField(null=True)
        invalid = IntegerField(default=0)
        fetched_at = DateTimeField()

        class Meta:
            database = db
            table_name = 'kf_customer'

    return [KfCursor, KfSession, KfCode, KfCustomer]


def up(migrator, db):
    db.create_tables(_frozen_models(db))


def down(migrator, db):
    db.drop_tables(_frozen_models(db))
