"""The outer, still encrypted POST body of a callback: where its ciphertext is, and what it says of its app.

One reader per body format, each returning an Envelope: parse_xml for the self-built apps'
<xml><Encrypt> body (protocol §4), parse_json for the 智能机器人's {"encrypt": ...}. The plaintext
inside is read by wecomd.wecom.messages (XML) or wecomd.wecom.bot (JSON).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from wecomd.wecom.messages import MalformedXmlError, MessageError, XmlInput, parse_document, to_fields


class MissingEncryptError(MessageError):
    """A callback envelope without a usable <Encrypt> element."""


@dataclass
class Envelope:
    """What a callback's body says before decryption: the ciphertext, and the receiver it names."""

    encrypt: str
    to_user: Optional[str]
    agent_id: Optional[str]


def parse_xml(body: XmlInput) -> Envelope:
    """Read an XML callback body: <Encrypt> by name, in any position (§4).

    Parsed as safely as a plaintext (messages.parse_document: DOCTYPE and entities refused) and
    held to the same depth limit; ToUserName and AgentID (or AgentId) count only as single leaves.
    """
    root = parse_document(body)[1]
    found = [child for child in root if child.tag == "Encrypt"]
    if len(found) > 1:
        raise MalformedXmlError("envelope has %d <Encrypt> elements" % len(found))
    # Base64 never contains whitespace, so surrounding newlines are formatting, not data.
    encrypt = (found[0].text or "").strip() if found and len(found[0]) == 0 else ""
    if not encrypt:
        raise MissingEncryptError("envelope has no <Encrypt> text")
    fields = to_fields(root)
    to_user, agent_id = fields.get("ToUserName"), fields.get("AgentID")
    if not isinstance(agent_id, str):
        agent_id = fields.get("AgentId")
    return Envelope(encrypt=encrypt, to_user=to_user if isinstance(to_user, str) else None,
                    agent_id=agent_id if isinstance(agent_id, str) else None)


def parse_json(body: bytes) -> Envelope:
    """Read a 智能机器人 callback body: a JSON object whose "encrypt" is the ciphertext."""
    from wecomd.wecom.bot import load_json

    encrypt = load_json(body, "the envelope").get("encrypt")
    if not isinstance(encrypt, str) or not encrypt.strip():
        raise MissingEncryptError("envelope has no \"encrypt\" text")
    return Envelope(encrypt=encrypt.strip(), to_user=None, agent_id=None)
