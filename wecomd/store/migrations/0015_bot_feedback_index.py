"""`bot_stream.feedback_id` indexed: a 智能机器人's feedback_event finds the stream it rates by that id
(BotStreams.feedback), and without the index that read scanned every stream ever answered, on the
writer's thread, where callbacks wait."""

INDEX = 'botstream_feedback_id'  # the name peewee gives BotStream.feedback_id's index


def up(migrator, db):
    db.execute_sql('CREATE INDEX IF NOT EXISTS "%s" ON "bot_stream" ("feedback_id")' % INDEX)


def down(migrator, db):
    migrator.migrate(migrator.drop_index('bot_stream', INDEX))
