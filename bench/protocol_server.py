"""A diagnostic for bench/load.py: bare Tornado plus the WeCom protocol work alone.

A plain RequestHandler that does what every callback must, with wecomd's own protocol modules
(parse the envelope, verify the signature, decrypt, parse the message XML, build and encrypt the
passive reply) and nothing else: no storage, no rules, no log line, no metrics. Its rate against
the bare "hello" handler shows how much of the ceiling the protocol itself leaves in CPython;
bench/parse.py times its pieces one by one.

    python bench/protocol_server.py PORT TOKEN AES_KEY CORP_ID
"""
import asyncio
import sys
import time

from tornado import web

from wecomd.wecom import crypto, envelopes, messages, replies


class Protocol(web.RequestHandler):
    def initialize(self, codec: crypto.WecomCrypto, corp_id: str) -> None:
        self.codec, self.corp_id = codec, corp_id

    def post(self, *args) -> None:
        query = [self.get_query_argument(name, strip=False) for name in ("msg_signature", "timestamp", "nonce")]
        envelope = envelopes.parse_xml(self.request.body)
        message = messages.parse(self.codec.decrypt_message(*query, envelope.encrypt))
        reply = replies.reply_text(message.from_user, self.corp_id, "已收到")
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(self.codec.encrypt_reply(reply, str(int(time.time())), "1234567890"))


async def main(port: int, token: str, aes_key: str, corp_id: str) -> None:
    codec = crypto.WecomCrypto(token, aes_key, corp_id)
    # Anything else is a 404, which is all bench/load.py's readiness probe needs.
    web.Application([(r"/callback/.*", Protocol, dict(codec=codec, corp_id=corp_id))]).listen(port, "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), *sys.argv[2:5]))
