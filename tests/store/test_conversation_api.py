"""/api/conversations over HTTP: the summary's pages, read marks and a manual reply, from callbacks
that go through the whole daemon."""
from __future__ import annotations

from datetime import datetime

from support.base import WecomdTestCase
from support.peer import CORP_ID
from support.store import grouped, summary
from wecomd.wecom import samples

def msg(user="zhangsan", content="hello", **kw) -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content, **kw)


class ConversationsApiTest(WecomdTestCase):
    def test_paging_over_http(self):
        for n in range(5):
            self.assertEqual(self.callback(msg(user="u%d" % n, content="m%d" % n)).code, 200)
        retried = msg(user="u1", content="again", msg_id="7000000000000000001")
        for _ in range(3):  # WeCom retries: one message
            self.assertEqual(self.callback(retried).code, 200)
        status, data = self.api("/api/conversations", headers=self.bearer(), limit="2")
        self.assertEqual(status, 200)
        self.assertEqual([c["user"] for c in data["conversations"]], ["u1", "u4"])
        self.assertEqual(data["conversations"][0]["count"], 4)  # two messages, each with the app's reply
        self.assertEqual(data["next"], data["conversations"][-1]["last_id"])
        users, cursor = [], None
        while True:
            params = {"limit": "2"} if cursor is None else {"limit": "2", "before": str(cursor)}
            status, data = self.api("/api/conversations", headers=self.bearer(), **params)
            self.assertEqual(status, 200)
            users += [c["user"] for c in data["conversations"]]
            cursor = data["next"]
            if cursor is None:
                break
        self.assertEqual(users, ["u1", "u4", "u3", "u2", "u0"])
        # The default page holds them all; unknown apps have none; a bad cursor is refused.
        status, data = self.api("/api/conversations", headers=self.bearer())
        self.assertEqual((len(data["conversations"]), data["next"]), (5, None))
        self.assertEqual(self.api("/api/conversations", headers=self.bearer(), app="quiet")[1],
                         {"conversations": [], "next": None})
        self.assertEqual(self.api("/api/conversations", headers=self.bearer(), before="x")[0], 400)
        self.assertEqual(self.api("/api/conversations", headers=self.bearer(), limit="-1")[0], 400)

    def test_manual_reply_and_read_mark_over_http(self):
        self.callback(msg(user="zhangsan", content="打印机卡纸了"))
        self.callback(msg(user="zhangsan", content="还在吗"))
        convs = self.api("/api/conversations")[1]["conversations"]
        self.assertEqual([(c["count"], c["unread"]) for c in convs], [(4, 2)])  # and the app's 2 replies
        status, _ = self.api("/api/conversations/read", method="POST",
                             body={"app": "helpdesk", "user": "zhangsan", "up_to_id": convs[0]["last_id"]})
        self.assertEqual(status, 204)
        status, sent = self.api("/api/messages", method="POST",
                                body={"app": "helpdesk", "to_user": "zhangsan", "msgtype": "text", "content": "已处理"})
        self.assertEqual(status, 201)
        [conv] = self.api("/api/conversations")[1]["conversations"]
        self.assertEqual((conv["count"], conv["unread"], conv["last_id"]), (5, 0, sent["id"]))
        self.assertEqual(conv["last_message"]["direction"], "out")
        self.assertIsNotNone(conv["paused_until"])  # the manual reply took the conversation over
        self.assertEqual(summary(self.services.store, now=datetime.utcnow()),
                         grouped(self.services.store, now=datetime.utcnow()))
