"""`wecomd user` and `wecomd audit export` as an operator runs them, against a running server's
database: an account added on the command line signs in at once, and disabling it or changing its
password ends its sessions at the next request."""
from __future__ import annotations

import json

from support.base import WecomdTestCase
from support.cli import wecomd


class UserCliTest(WecomdTestCase):
    def cli(self, *args, stdin=None):
        return wecomd(*args, "-c", str(self.config.path), stdin=stdin)

    def test_add_list_sign_in_disable_enable_passwd_and_the_audit_export(self):
        added = self.cli("user", "add", "li", "--role", "operator", "--apps", "helpdesk", stdin="first-password\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertIn("added li (operator, helpdesk)", added.stdout)
        listed = self.cli("user", "list", "--json")
        self.assertEqual([json.loads(line)["name"] for line in listed.stdout.splitlines()], ["li"])
        self.assertEqual(json.loads(listed.stdout)["apps"], ["helpdesk"])
        headers = self.login("li", "first-password")
        me = lambda: self.api("/api/me", headers=headers)  # noqa: E731
        self.assertEqual(me()[1], {"name": "li", "role": "operator", "apps": ["helpdesk"]})

        self.assertEqual(self.cli("user", "disable", "li").returncode, 0)
        self.assertEqual(me()[0], 401)
        self.assertEqual(self.cli("user", "enable", "li").returncode, 0)
        self.assertEqual(me()[0], 200)
        self.assertEqual(self.cli("user", "passwd", "li", stdin="second-password\n").returncode, 0)
        self.assertEqual(me()[0], 401)
        self.assertEqual(self.api("/api/me", headers=self.login("li", "second-password"))[0], 200)
        self.assertEqual(self.cli("user", "set", "li", "--role", "viewer", "--all-apps").returncode, 0)
        self.assertEqual(self.db(self.services.store.operators.get, "li")["role"], "viewer")

        token = self.cli("user", "token", "li", "--label", "ci")
        self.assertEqual(token.returncode, 0, token.stderr)
        self.assertEqual(self.api("/api/me", headers=self.bearer(token.stdout.strip()))[1]["name"], "li")

        exported = self.cli("audit", "export", "--actor", "li")
        self.assertEqual([json.loads(line)["action"] for line in exported.stdout.splitlines()], ["login", "login"])
        everything = [json.loads(line) for line in self.cli("audit", "export").stdout.splitlines()]
        changes = [(row["action"], row["target"]) for row in everything if row["action"].startswith(("operator", "token"))]
        self.assertEqual(changes, [("operator_add", "operator:li"), ("operator_disable", "operator:li"),
                                   ("operator_enable", "operator:li"), ("operator_passwd", "operator:li"),
                                   ("operator_set", "operator:li"), ("token_create", "operator:li")])
        self.assertTrue(all(row["actor"].startswith("cli") for row in everything if row["action"] != "login"))

    def test_refusals_exit_non_zero_and_change_nothing(self):
        cases = [
            (("user", "add", "li", "--role", "root"), "pw-long-enough\n", 2),
            (("user", "add", "li", "--role", "viewer", "--apps", "nosuchapp"), "pw-long-enough\n", 2),
            (("user", "add", "admin", "--role", "viewer"), "pw-long-enough\n", 2),
            (("user", "add", "bad name", "--role", "viewer"), "pw-long-enough\n", 2),
            (("user", "add", "li", "--role", "viewer"), "\n", 1),
            (("user", "disable", "nobody"), None, 1),
            (("user", "set", "nobody", "--role", "admin"), None, 1),
        ]
        for args, stdin, code in cases:
            self.assertEqual(self.cli(*args, stdin=stdin).returncode, code, args)
        self.assertEqual(self.db(self.services.store.operators.all), [])
        self.assertEqual(self.cli("user", "add", "li", "--role", "viewer", stdin="pw-long-enough\n").returncode, 0)
        again = self.cli("user", "add", "li", "--role", "admin", stdin="pw-long-enough\n")
        self.assertEqual(again.returncode, 1)
        self.assertIn("exists already", again.stderr)
        self.assertEqual(self.db(self.services.store.operators.get, "li")["role"], "viewer")
