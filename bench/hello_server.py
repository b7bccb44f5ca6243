"""The ceiling for bench/load.py: a bare Tornado handler that reads the POST body and answers."""
import asyncio
import sys

from tornado import web


class Hello(web.RequestHandler):
    def post(self, *args):
        self.finish("hello")

    get = post


async def main(port: int) -> None:
    web.Application([(r"/.*", Hello)]).listen(port, "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
