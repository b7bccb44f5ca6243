"""Message search: the text each message is found by, and the `q` filter of the message list.

The text (`search_text`) is stored with every message and, on SQLite, indexed by the trigram FTS5
table message_fts (migrations 0002 and 0004); elsewhere `q` is a LIKE scan of it.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import peewee
from peewee import SQL, SqliteDatabase, fn

from .errors import guarded
from .writer import bulky, redoable

MERGE_PAGES = 4  # pages a merge step writes: a millisecond or a few (docs/kf.md, Speed)

# Where the searchable words of each MsgType live in `fields`, besides `content` (which a
# text message and every outbound reply carry). Paths descend into nested objects.
_SEARCH_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "location": (("Label",), ("Poiname",)),
    "link": (("Title",), ("Description",), ("Url",)),
    "file": (("FileName",),),
    "event": (("Event",), ("EventKey",), ("ScanCodeInfo", "ScanResult"),
              ("SendLocationInfo", "Label"), ("SendLocationInfo", "Poiname")),
}

# The trigram tokenizer indexes 3-character windows: shorter queries cannot MATCH as they are.
# A shorter one is looked for among the newest SHORT_PROBE messages first: found in SHORT_COMMON
# of them, it is common and a newest-first LIKE scan fills a page at once; else it is rare, and
# matches the (at most SHORT_MAX_TERMS) indexed trigrams that start with it (migration 0004).
FTS_MIN_CHARS = 3
SHORT_PROBE = 2000
SHORT_COMMON = 10
SHORT_MAX_TERMS = 1000
_FTS_IDS = "(SELECT rowid FROM message_fts WHERE message_fts MATCH ?)"
_FTS_INDEX = "INSERT INTO message_fts(rowid, search_text) SELECT id, search_text FROM message_search WHERE id IN (%s)"
_FTS_TERMS = "SELECT term FROM message_fts_terms WHERE term >= ? AND term < ? LIMIT ?"
# The UserIDs whose cached contact name (store.contacts) holds a LIKE pattern.
_NAMED_USERS = "SELECT DISTINCT \"userid\" FROM \"contact\" WHERE \"name\" %s %s ESCAPE '\\' LIMIT 200"
# 微信客服: the conversations (OPEN_KFID/EXTERNAL_USERID) of the customers whose cached nickname does.
_NAMED_CUSTOMERS = ("SELECT s.\"open_kfid\" || '/' || s.\"external_userid\" FROM \"kf_session\" s JOIN \"kf_customer\" c"
                    " ON c.\"external_userid\" = s.\"external_userid\" WHERE c.\"nickname\" %s %s ESCAPE '\\' LIMIT 200")


def search_text(msgtype: str, content: Optional[str], fields: Optional[dict]) -> Optional[str]:
    """Return the text message search covers, or None when a message has none.

    `content` first (text messages, outbound replies), then the per-type fields of
    _SEARCH_PATHS, joined with newlines. Pure: the 0002 migration back-fills old
    rows with it, so old and new rows are searchable alike.
    """
    fields = fields if isinstance(fields, dict) else {}
    if content is None and msgtype == "text":
        content = fields.get("Content")
    pieces = [content] + [_lookup(fields, path) for path in _SEARCH_PATHS.get(msgtype, ())]
    text = "\n".join(p for p in pieces if isinstance(p, str) and p.strip())
    return text or None


class Search:
    """The `q` filter over the message model `Message` of the database `db`."""

    def __init__(self, db: peewee.Database, Message: type) -> None:
        self.db, self.Message = db, Message
        # Full-text search is SQLite's FTS5 (migration 0002); elsewhere q is a LIKE scan.
        self.fts = isinstance(db, SqliteDatabase)

    def index_inserted(self, ids: Sequence[int]) -> None:
        """Index the messages `ids` a bulk INSERT just added (its trigger stood aside: migration
        0012), in the caller's transaction: one statement for the page, the same text the trigger
        indexes (the message_search view's). Nothing to do without FTS."""
        if self.fts and ids:
            self.db.execute_sql(_FTS_INDEX % ", ".join([self.db.param] * len(ids)), list(ids))

    @redoable  # a merge a crash undid is merged again: the index holds the same either way
    @bulky  # a writer call of its own, after the callbacks waiting
    @guarded("merge the search index")
    def merge_step(self, pages: int = MERGE_PAGES) -> bool:
        """About `pages` pages of merging of the full-text index's segments (FTS5's 'merge'; migration
        0014 turned its merging inside writes off): whether there was any to do. False without FTS."""
        if not self.fts:
            return False
        before = self.db.connection().total_changes
        self.db.execute_sql("INSERT INTO message_fts(message_fts, rank) VALUES ('merge', %d)" % int(pages))
        return self.db.connection().total_changes - before >= 2  # FTS5's sign that it merged

    @guarded("count the search index's segments")
    def segments(self) -> int:
        """The full-text index's segments now (0 without FTS): few, while the upkeep keeps up."""
        if not self.fts:
            return 0
        return self.db.execute_sql('SELECT COUNT(DISTINCT "segid") FROM "message_fts_idx"').fetchone()[0]

    def matches(self, q: str) -> peewee.Expression:
        """Messages whose search text holds `q`, or whose user's cached contact name (or 微信客服
        customer's nickname) does (searching 张三 finds 张三's messages), case-insensitively and
        literally: quotes, *, OR, % and _ match themselves. A short `q` on SQLite runs one or two lookups first."""
        text = self._text_matches(q)
        # Asked first, so that a query no name matches keeps the text search's own plan.
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        like = "LIKE" if self.fts else "ILIKE"
        users = [row[0] for named in (_NAMED_USERS, _NAMED_CUSTOMERS)
                 for row in self.db.execute_sql(named % (like, self.db.param), (pattern,))]
        return text | self.Message.user.in_(users) if users else text

    def _text_matches(self, q: str) -> peewee.Expression:
        M = self.Message
        like = M.search_text.contains(q)  # peewee escapes % _ \ for LIKE
        if not self.fts or "\n" in q:  # the index ends every text with newlines: LIKE is exact
            return like
        if len(q) >= FTS_MIN_CHARS:
            # One FTS5 phrase, so operators and * in q stay literal; trigram phrases
            # match substrings, case-insensitively.
            return M.id.in_(SQL(_FTS_IDS, (_phrase(q),)))
        newest = (M.select(fn.MAX(M.id)).scalar() or 0) - SHORT_PROBE
        if len(M.select(M.id).where((M.id > newest) & like).limit(SHORT_COMMON).tuples()) >= SHORT_COMMON:
            return like
        # Every occurrence starts an indexed trigram, as the index adds two newlines to each text.
        folded = q.lower()
        terms = [row[0] for row in self.db.execute_sql(
            _FTS_TERMS, (folded, folded + "\U0010ffff", SHORT_MAX_TERMS + 1))]
        if len(terms) > SHORT_MAX_TERMS:
            return like
        if not terms:
            return SQL("0 = 1")
        return M.id.in_(SQL(_FTS_IDS, (" OR ".join(_phrase(term) for term in terms),)))


def _phrase(text: str) -> str:
    """`text` as one FTS5 string: operators, * and quotes inside it stay literal."""
    return '"%s"' % text.replace('"', '""')


def _lookup(fields: dict, path: tuple[str, ...]) -> Any:
    value: Any = fields
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value
