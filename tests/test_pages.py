"""The dashboard's templates, scripts and translations, read from the files and from the real
application, without a browser (a Playwright page keeps an event loop running in its thread, so
these live apart from tests/test_browser.py).

The scripts take every UI string from one catalogue, wecomd/translations/*.csv: the dashboard page
embeds the catalogue in its language (handlers/base.py ui_strings) and static/dom.js `t()` reads it.
"""
from __future__ import annotations

import ast
import csv
import json
import re

from support import ROOT
from support.base import WecomdTestCase

TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"
TRANSLATIONS = ROOT / "wecomd" / "translations"

_TEMPLATE_MSGID = re.compile(r"""\b_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\)""")
_PY_MSGID = re.compile(r"""locale\.translate\(\s*"((?:[^"\\]|\\.)*)"\s*[,)]""")
_JS_MSGID = re.compile(r"""\b(?:t|tParts)\(\s*"((?:[^"\\]|\\.)*)"\s*[,)]""")
_PLACEHOLDER = re.compile(r"\{\w+\}|%\(\w+\)[sd]")


def _template_msgids() -> set:
    found = set()
    for path in TEMPLATES.glob("*.html"):
        for double, single in _TEMPLATE_MSGID.findall(path.read_text(encoding="utf-8")):
            found.add(ast.literal_eval('"%s"' % double) if double else ast.literal_eval("'%s'" % single))
    return found


def _js_used_msgids() -> set:
    return {m for path in STATIC.glob("*.js") for m in _JS_MSGID.findall(path.read_text(encoding="utf-8"))}


def _python_msgids() -> set:
    return {m for path in (ROOT / "wecomd").rglob("*.py") for m in _PY_MSGID.findall(path.read_text(encoding="utf-8"))}


def _csv(name: str) -> dict:
    with open(TRANSLATIONS / name, encoding="utf-8-sig", newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    assert all(len(row) in (2, 3) for row in rows), "%s: every row is msgid,translation[,plural]" % name
    return {row[0]: row[1] for row in rows}


def test_every_msgid_has_a_chinese_translation():
    zh = _csv("zh_CN.csv")
    wanted = _template_msgids() | _js_used_msgids() | _python_msgids()
    assert len(wanted) > 40
    assert sorted(m for m in wanted if not zh.get(m, "").strip()) == []
    for msgid, text in zh.items():
        assert msgid == msgid.strip(), "Tornado strips CSV cells: %r never matches" % msgid
        assert sorted(_PLACEHOLDER.findall(msgid)) == sorted(_PLACEHOLDER.findall(text)), msgid


def test_english_catalogue_exists_for_tornado():
    """Tornado only offers locales that have a file, so English needs one even if it maps 1:1."""
    en = _csv("en_US.csv")
    assert en and all(msgid == text for msgid, text in en.items())


def test_every_script_string_is_in_every_catalogue():
    """The scripts take their strings from the catalogue alone (the page embeds it whole), so each
    one they use must be in every language's file."""
    used = _js_used_msgids()
    assert len(used) > 50  # the pattern finds the scripts' t("...") and tParts("...") calls
    for name in sorted(path.name for path in TRANSLATIONS.glob("*.csv")):
        assert sorted(used - set(_csv(name))) == [], "used in static/*.js but missing from %s" % name


def test_no_template_lists_script_strings():
    """No hand-kept list: outside its own _("...") texts, no template names a string the scripts use."""
    used = _js_used_msgids()
    for path in TEMPLATES.glob("*.html"):
        text = _TEMPLATE_MSGID.sub("", path.read_text(encoding="utf-8"))
        listed = sorted(m for m in used if '"%s"' % m in text or "'%s'" % m in text)
        assert listed == [], path.name
    index = (TEMPLATES / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<script type="application/json" id="i18n">(.*?)</script>', index) == [
        "{% raw json_encode(strings) %}"]


class TestTheDashboardEmbedsTheCatalogue(WecomdTestCase):
    """The page the scripts read their strings from, served by the real application."""

    def strings(self, lang: str) -> dict:
        headers = dict(self.session())
        headers["Cookie"] += "; wecomd_locale=" + lang
        page = self.fetch("/", headers=headers)
        assert page.code == 200, page.code
        block = re.search(r'<script type="application/json" id="i18n">(.*?)</script>', page.body.decode(), re.DOTALL)
        return json.loads(block.group(1))

    def test_each_language_gets_its_whole_catalogue(self):
        for lang in ("zh_CN", "en_US"):
            catalogue = {msgid.strip(): text.strip() for msgid, text in _csv(lang + ".csv").items()}
            strings = self.strings(lang)
            assert strings == catalogue, lang
            assert _js_used_msgids() <= set(strings), lang
        assert self.strings("zh_CN")["Live"] == "实时连接"  # what the indicator shows (test_language_switch)
        assert self.strings("en_US")["Live"] == "Live"


def test_pages_stay_within_the_content_security_policy():
    """No inline scripts, styles or event handlers (CSP), and scripts never parse data as HTML."""
    for path in TEMPLATES.glob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\sstyle\s*=|<style", text), path.name
        assert not re.search(r"\son[a-z]+\s*=", text), path.name
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert 'type="application/json"' in tag or "src=" in tag, (path.name, tag)
    for path in STATIC.glob("*.js"):
        text = path.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, (path.name, sink)


def test_each_panel_is_a_handler_module_and_a_view_module():
    """app.PANELS, the route table's dashboard panels: each serves its own routes and has its view,
    static/<name>.js, which static/app.js builds; the views import no other panel's view."""
    from wecomd import app

    names = [module.__name__.rsplit(".", 1)[1] for module in app.PANELS]
    assert names == ["conversations", "thread", "rules", "live", "team"]
    entry = (STATIC / "app.js").read_text(encoding="utf-8")
    routes = {rule[0] for module in app.PANELS for rule in module.routes(None)}
    assert {"/api/conversations", "/api/messages", "/api/rules", "/api/live"} <= routes
    for name in names:
        assert 'from "./%s.js"' % name in entry, name
        view = (STATIC / (name + ".js")).read_text(encoding="utf-8")
        others = sorted(other for other in names if other != name and '"./%s.js"' % other in view)
        assert others == [], name
    # The router knows the hash, not the views: app.js mounts them.
    assert re.findall(r'from "\./(\w+)\.js"', (STATIC / "router.js").read_text(encoding="utf-8")) == []
