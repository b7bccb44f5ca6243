"""Where in its conversation something happened, as the id of the conversation's newest message then:
`conversation_state.closed_last_id` (when it was closed) and `note.after_id` (when the note was
written). Message ids are the conversation's order; times are whole seconds and cannot tell a note
from the message of the same second.

- An inbound message reopens a closed conversation. Rather than a write on the callback path (the
  inbox stores a message in one statement and nothing else), the state is derived when it is read:
  a conversation stored "closed" is open again as soon as it has an inbound message with an id
  above `closed_last_id` (store/assignments.py).
- A note is shown, and exported, right after the message `after_id` (store/notes.py).

Rows written before this migration get the newest message id of their conversation: a closed one
stays closed until the next inbound message, and a note follows the conversation's messages.
"""
from peewee import SQL, CharField, IntegerField, Model, fn


def _columns():
    # Nullable: SQLite adds each with one ALTER TABLE, without rebuilding the table.
    return [('conversation_state', 'closed_last_id', IntegerField(null=True)),
            ('note', 'after_id', IntegerField(null=True))]


def _frozen_models(db):
    class ConversationState(Model):
        app = CharField()
        user = CharField()
        state = CharField()
        closed_last_id = IntegerField(null=True)

        class Meta:
            database = db
            table_name = 'conversation_state'

    class Note(Model):
        app = CharField()
        user = CharField()
        after_id = IntegerField(null=True)

        class Meta:
            database = db
            table_name = 'note'

    class Message(Model):
        app = CharField()
        user = CharField(null=True)

        class Meta:
            database = db
            table_name = 'message'

    return ConversationState, Note, Message


def up(migrator, db):
    migrator.migrate(*[migrator.add_column(table, name, field) for table, name, field in _columns()])
    state, note, message = _frozen_models(db)
    for model, column, where in ((state, 'closed_last_id', state.state == 'closed'), (note, 'after_id', None)):
        newest = (message.select(fn.MAX(message.id))
                  .where((message.app == model.app) & (message.user == model.user)))
        query = model.update({getattr(model, column): fn.COALESCE(newest, SQL('0'))})
        (query.where(where) if where is not None else query).execute()


def down(migrator, db):
    migrator.migrate(*[migrator.drop_column(table, name) for table, name, _ in _columns()])
