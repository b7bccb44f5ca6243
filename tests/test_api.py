"""The JSON API against the real app: conversations, messages, paging, search, replies, media, export."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from unittest import mock

from support.base import WecomdTestCase
from support.peer import CORP_ID
from wecomd.handlers import base
from wecomd.wecom import samples


def msg(kind: str = "text", user: str = "zhangsan", content: str = "hello", **kw) -> str:
    return samples.build(kind, corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content, **kw)


class MessagesApiTest(WecomdTestCase):
    def test_conversations_with_last_message_and_unread(self):
        self.callback(msg(content="一"))
        self.callback(msg(content="二"))
        self.callback(msg(user="lisi", content="三"))
        status, data = self.api("/api/conversations")
        self.assertEqual(status, 200)
        convs = data["conversations"]
        # Each message has the app's automatic reply after it: counted, never unread, the newest.
        self.assertEqual([(c["user"], c["count"], c["unread"]) for c in convs], [("lisi", 2, 1), ("zhangsan", 4, 2)])
        last = convs[1]["last_message"]
        self.assertEqual((last["content"], last["direction"], last["automatic"]), ("已收到", "out", "passive"))
        status, _ = self.api("/api/conversations/read", method="POST",
                             body={"app": "helpdesk", "user": "zhangsan", "up_to_id": convs[1]["last_id"]})
        self.assertEqual(status, 204)
        unread = {c["user"]: c["unread"] for c in self.api("/api/conversations")[1]["conversations"]}
        self.assertEqual(unread, {"lisi": 1, "zhangsan": 0})

    def test_keyset_paging_newest_first(self):
        for i in range(25):
            self.callback(msg(content="m%02d" % i))
        seen, cursor = [], None
        while True:
            params = {"app": "helpdesk", "user": "zhangsan", "limit": "10"}
            if cursor:
                params["before"] = str(cursor)
            status, data = self.api("/api/messages", **params)
            self.assertEqual(status, 200)
            seen += [m["content"] for m in data["messages"] if m["direction"] == "in"]
            cursor = data["next"]
            if cursor is None:
                break
        self.assertEqual(seen, ["m%02d" % i for i in reversed(range(25))])

    def test_filters_and_chinese_search(self):
        self.callback(msg(content="我们的服务器宕机了"))
        self.callback(msg(user="lisi", content="服务器好了吗"))
        self.callback(msg("location", user="wangwu"))
        self.callback(msg("click", user="lisi", event_key="RUN_BACKUP"))
        q = lambda **p: [m["from_user"] for m in self.api("/api/messages", **p)[1]["messages"]]  # noqa: E731
        self.assertEqual(sorted(q(q="服务器")), ["lisi", "zhangsan"])
        self.assertEqual(q(q="宕机"), ["zhangsan"])
        self.assertEqual(q(q="服务器", user="lisi"), ["lisi"])
        self.assertEqual(q(q="广州"), ["wangwu"])  # the location's label
        self.assertEqual(q(msgtype="event"), ["lisi"])
        self.assertEqual(q(q="nothing like this"), [])

    def test_one_message_and_errors_as_json(self):
        self.callback(msg(content="单条"))
        row = self.inbound()[0]
        status, data = self.api("/api/messages/%d" % row["id"])
        self.assertEqual((status, data["content"], data["fields"]["Content"]), (200, "单条", "单条"))
        self.assertNotIn("reply", data)
        status, data = self.api("/api/messages/999999")
        self.assertEqual((status, set(data)), (404, {"error"}))
        status, data = self.api("/api/messages", limit="abc")
        self.assertEqual(status, 400)
        self.assertIn("limit", data["error"])


class LongPageTest(WecomdTestCase):
    """A page of up to 500 rows is encoded a part at a time, the event loop turning in between (a
    callback never waits for a whole page's encoding), and is the same JSON as in one go."""

    def test_the_event_loop_turns_between_the_parts_of_a_long_page(self):
        for i in range(130):  # each with the app's automatic reply: 260 messages
            self.callback(msg(content="第%d条消息" % i))
        turns, seen = 0, []

        async def count_turns():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        def watched(*args):
            for part in encoded_page(*args):
                seen.append(turns)  # how often the loop had turned when this part was encoded
                yield part

        encoded_page = base.encoded_page
        counting = self.io_loop.asyncio_loop.create_task(count_turns())
        try:
            with mock.patch.object(base, "encoded_page", watched):
                resp = self.fetch("/api/messages?app=helpdesk&limit=250", headers=self.session())
        finally:
            counting.cancel()
        self.assertEqual(resp.code, 200)
        data = json.loads(resp.body)
        self.assertEqual(len(data["messages"]), 250)
        # The same bytes as json.dumps in one go.
        self.assertEqual(resp.body.decode(), json.dumps(data, ensure_ascii=False))
        # The head, three parts of at most 100 rows, the tail; the loop turned before each was encoded.
        self.assertEqual(len(seen), 5)
        self.assertEqual(len(set(seen)), 5, seen)

    def test_parts_join_to_what_json_dumps_gives(self):
        rows = [{"id": i, "content": "内容 %d \"quoted\"" % i, "fields": {"n": [i, None]}} for i in range(250)]
        for count in (0, 1, 99, 100, 101, 250):
            for cursor in (None, 1234):
                parts = list(base.encoded_page("conversations", rows[:count], cursor))
                self.assertEqual("".join(parts), json.dumps({"conversations": rows[:count], "next": cursor},
                                                            ensure_ascii=False))
                self.assertEqual(len(parts), 2 + (count + 99) // 100)


class ReplyApiTest(WecomdTestCase):

    def test_manual_reply_is_stored_then_sent_through_the_api(self):
        status, data = self.api("/api/messages", method="POST",
                                body={"app": "helpdesk", "to_user": "zhangsan", "msgtype": "text", "content": "已处理"})
        self.assertEqual(status, 201)
        self.assertEqual((data["direction"], data["status"], data["operator"]), ("out", "pending", "admin"))
        sent = self.wait_for(lambda: self.api("/api/messages/%d" % data["id"])[1]["status"] == "sent" and self.fake.sent)
        self.assertEqual(sent[0]["touser"], "zhangsan")
        self.assertEqual(sent[0]["text"]["content"], "已处理")
        self.assertEqual(sent[0]["agentid"], 1000002)
        row = self.api("/api/messages/%d" % data["id"])[1]
        self.assertTrue(row["msg_id"])

    def test_long_text_is_split_into_parts(self):
        status, data = self.api("/api/messages", method="POST",
                                body={"app": "helpdesk", "to_user": "zhangsan", "content": "长" * 1500})
        self.assertEqual(status, 201)
        self.assertEqual(len(data["parts"]), 3)  # 4500 bytes in 2048-byte parts
        self.wait_for(lambda: len(self.fake.sent) == 3)
        self.assertEqual("".join(m["text"]["content"] for m in self.fake.sent), "长" * 1500)

    def test_failed_reply_shows_the_reason_and_can_be_retried(self):
        self.fake.fail_next("/cgi-bin/gettoken", 60020, "not allow to access from your ip")
        status, data = self.api("/api/messages", method="POST", body={"app": "helpdesk", "to_user": "lisi", "content": "x"})
        row = self.wait_for(lambda: (r := self.api("/api/messages/%d" % data["id"])[1])["status"] == "failed" and r)
        self.assertIn("60020", row["error"])
        self.assertIn("trusted IP", row["error"])
        status, retried = self.api("/api/messages/%d/retry" % data["id"], method="POST", body={})
        self.assertEqual((status, retried["status"]), (200, "pending"))
        self.wait_for(lambda: self.api("/api/messages/%d" % data["id"])[1]["status"] == "sent")

    def test_bad_reply_requests(self):
        for body, word in (({"app": "nope", "to_user": "u", "content": "x"}, "app"),
                           ({"app": "helpdesk", "to_user": "", "content": "x"}, "to_user"),
                           ({"app": "helpdesk", "to_user": "u", "content": "  "}, "content"),
                           ({"app": "helpdesk", "to_user": "u", "content": "x", "msgtype": "image"}, "text")):
            status, data = self.api("/api/messages", method="POST", body=body)
            self.assertEqual(status, 400)
            self.assertIn(word, data["error"])
        resp = self.fetch("/api/messages", method="POST", body="not json",
                          headers={**self.session(), "X-XSRFToken": self.xsrf, "Content-Type": "application/json"})
        self.assertEqual(resp.code, 400)


class MediaAndExportTest(WecomdTestCase):
    def test_inbound_image_is_downloaded_and_served_to_signed_in_users(self):
        from wecomd.wecom.sandbox import seed_samples

        media = seed_samples(self.fake)
        self.callback(msg("image", media_id=media["image"]))
        row = self.inbound()[0]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (self.api("/api/messages/%d" % row["id"])[1]["media"] or {}).get("status") != "stored":
            self.io_loop.run_sync(lambda: __import__("asyncio").sleep(0.05))
        info = self.api("/api/messages/%d" % row["id"])[1]["media"]
        self.assertEqual(info["status"], "stored")
        resp = self.fetch("/api/media/%d" % row["id"], headers=self.session())
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.body, self.fake.media[media["image"]][0])
        self.assertTrue(resp.headers["Content-Type"].startswith("image/"))
        self.assertEqual(len(resp.body), info["size"])
        self.assertEqual(self.fetch("/api/media/%d" % row["id"]).code, 401)

    def test_export_download_shares_the_query(self):
        self.callback(msg(content="报表一"))
        self.callback(msg(user="lisi", content="报表二"))
        self.callback(msg(user="lisi", content="别的"))
        resp = self.fetch("/api/export?q=%E6%8A%A5%E8%A1%A8&format=jsonl", headers=self.session())
        self.assertEqual(resp.code, 200)
        self.assertIn("attachment", resp.headers["Content-Disposition"])
        rows = [json.loads(line) for line in resp.body.decode().splitlines()]
        self.assertEqual([r["content"] for r in rows], ["报表一", "报表二"])  # oldest first
        resp = self.fetch("/api/export?user=lisi&format=csv", headers=self.session())
        table = list(csv.DictReader(io.StringIO(resp.body.decode())))
        # The app's automatic replies are in the download too, marked.
        self.assertEqual([(r["content"], r["automatic"]) for r in table],
                         [("报表二", ""), ("已收到", "passive"), ("别的", ""), ("已收到", "passive")])
        self.assertEqual(self.fetch("/api/export?format=xml", headers=self.session()).code, 400)
