"""The 智能机器人's template cards (wecom-aibot.md §4, §7): checked against WeCom's limits before
anything is sent, and wrapped as the passive reply that shows a card or updates one.

A card is the JSON object WeCom calls `template_card`. A rule gives one (`card =`); wecomd sets its
`task_id`: a new card's is derived from the bot and the message (so a WeCom retry shows the same
card), and an update carries the event's own, as WeCom requires.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable, Iterable, List, Mapping, Optional

CARD_TYPES = ("text_notice", "news_notice", "button_interaction", "vote_interaction", "multiple_interaction")
TASK_ID = re.compile(r"[0-9A-Za-z_\-@]{1,128}\Z")
MAX_KEY_BYTES = 1024  # button, submit, question and action keys
MAX_OPTION_ID_BYTES = 128
# list -> (fewest, most) items
LIST_LIMITS = {
    ("button_list",): (1, 6),
    ("select_list",): (1, 3),
    ("checkbox", "option_list"): (1, 20),
    ("action_menu", "action_list"): (1, 3),
    ("horizontal_content_list",): (0, 6),
    ("jump_list",): (0, 3),
    ("vertical_content_list",): (0, 4),
}
OPTIONS_PER_SELECT = (1, 10)
# card_type -> the parts it cannot do without
REQUIRED = {"button_interaction": ("button_list",), "vote_interaction": ("checkbox", "submit_button"),
            "multiple_interaction": ("select_list", "submit_button")}


class CardError(ValueError):
    """A card WeCom would refuse; the message names the part at fault."""


def task_id_for(bot: str, msgid: str) -> str:
    """The task_id of a card answering `msgid`: unique per bot, the same for every delivery."""
    return "wecomd-" + hashlib.sha256(("card\n%s\n%s" % (bot, msgid)).encode("utf-8")).hexdigest()[:32]


def parse(text: str) -> dict:
    """A card from a rule's `card =` JSON text; CardError when it is not a usable card."""
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise CardError("not JSON: %s" % exc) from None
    problems_found = problems(card)
    if problems_found:
        raise CardError("; ".join(problems_found))
    return card


def problems(card: Any) -> List[str]:
    """Every reason WeCom would refuse `card`, [] when none (wecom-aibot.md §7)."""
    if not isinstance(card, dict):
        return ["a card is a JSON object {\"card_type\": ..., ...}"]
    found: List[str] = []
    if card.get("card_type") not in CARD_TYPES:
        found.append("card_type must be one of %s, not %r" % (", ".join(CARD_TYPES), card.get("card_type")))
    for part in REQUIRED.get(card.get("card_type"), ()):
        if part not in card:
            found.append("a %s card needs %s" % (card["card_type"], part))
    task_id = card.get("task_id")
    if task_id is not None and not (isinstance(task_id, str) and TASK_ID.match(task_id)):
        found.append("task_id must be 1 to 128 of 0-9 A-Z a-z _ - @")
    for path, (fewest, most) in LIST_LIMITS.items():
        items = _at(card, path)
        if items is None:
            continue
        name = ".".join(path)
        if not isinstance(items, list):
            found.append("%s must be a list" % name)
        elif not fewest <= len(items) <= most:
            found.append("%s holds %d items: WeCom takes %d to %d" % (name, len(items), fewest, most))
    for index, select in enumerate(_list(card, "select_list")):
        options = _at(select, ("option_list",)) if isinstance(select, dict) else None
        if not isinstance(options, list) or not OPTIONS_PER_SELECT[0] <= len(options) <= OPTIONS_PER_SELECT[1]:
            found.append("select_list[%d].option_list must hold 1 to 10 options" % index)
    for name, key in _keys(card):
        if not isinstance(key, str) or not key:
            found.append("%s must be a non-empty text" % name)
        elif len(key.encode("utf-8")) > MAX_KEY_BYTES:
            found.append("%s is over %d bytes" % (name, MAX_KEY_BYTES))
    for name, option_id in _option_ids(card):
        if not isinstance(option_id, str) or not option_id:
            found.append("%s must be a non-empty text" % name)
        elif len(option_id.encode("utf-8")) > MAX_OPTION_ID_BYTES:
            found.append("%s is over %d bytes" % (name, MAX_OPTION_ID_BYTES))
    return found


def check(card: Any) -> dict:
    """`card` itself when WeCom would take it, else CardError naming every problem."""
    found = problems(card)
    if found:
        raise CardError("; ".join(found))
    return card


def render(card: Any, fill: Callable[[str], str]) -> Any:
    """A copy of `card` with `fill` applied to every text in it (a rule's template fields)."""
    if isinstance(card, dict):
        return {key: render(value, fill) for key, value in card.items()}
    if isinstance(card, list):
        return [render(value, fill) for value in card]
    return fill(card) if isinstance(card, str) else card


def card_reply(card: Mapping, task_id: str) -> dict:
    """The passive reply showing `card` (to a message or enter_chat), under `task_id`."""
    return {"msgtype": "template_card", "template_card": check(dict(card, task_id=task_id))}


def update_reply(card: Mapping, task_id: str, userids: Optional[Iterable[str]] = None) -> dict:
    """The passive reply to a template_card_event: the card replaced by `card`, carrying the
    event's own `task_id`; for `userids` only, or (None) for every user of that message."""
    reply: dict = {"response_type": "update_template_card",
                   "template_card": check(dict(card, task_id=task_id))}
    if userids is not None:
        reply["userids"] = list(userids)
    return reply


def title(card: Mapping) -> str:
    """A line naming a card in the console: its main title, else its type."""
    main = card.get("main_title") if isinstance(card, Mapping) else None
    text = main.get("title") if isinstance(main, Mapping) else None
    return text if isinstance(text, str) and text else str(card.get("card_type") or "card")


# ---------------------------------------------------------------- walking a card

def _at(data: Any, path: Iterable[str]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _list(data: Any, key: str) -> list:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def _keys(card: dict) -> List[tuple]:
    """(name, value) of every key WeCom limits to 1,024 bytes that the card has."""
    keys = []
    for index, button in enumerate(_list(card, "button_list")):
        if isinstance(button, dict) and "key" in button:
            keys.append(("button_list[%d].key" % index, button["key"]))
    for index, action in enumerate(_list(card.get("action_menu") or {}, "action_list")):
        if isinstance(action, dict):
            keys.append(("action_menu.action_list[%d].key" % index, action.get("key")))
    submit = card.get("submit_button")
    if isinstance(submit, dict):
        keys.append(("submit_button.key", submit.get("key")))
    checkbox = card.get("checkbox")
    if isinstance(checkbox, dict):
        keys.append(("checkbox.question_key", checkbox.get("question_key")))
    for index, select in enumerate(_list(card, "select_list")):
        if isinstance(select, dict):
            keys.append(("select_list[%d].question_key" % index, select.get("question_key")))
    return keys


def _option_ids(card: dict) -> List[tuple]:
    ids = []
    for index, option in enumerate(_list(card.get("checkbox") or {}, "option_list")):
        if isinstance(option, dict):
            ids.append(("checkbox.option_list[%d].id" % index, option.get("id")))
    for number, select in enumerate(_list(card, "select_list")):
        for index, option in enumerate(_list(select, "option_list")):
            if isinstance(option, dict):
                ids.append(("select_list[%d].option_list[%d].id" % (number, index), option.get("id")))
    return ids
