"""Request bodies a browser would send: multipart/form-data with a file."""
from __future__ import annotations

import secrets


def multipart(fields: dict, file: tuple | None) -> tuple[bytes, str]:
    """A multipart/form-data body (fields, and a file as (name, bytes, type) in field `media`)."""
    boundary = "b-" + secrets.token_hex(8)
    parts = [b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
             % (boundary.encode(), name.encode(), value.encode("utf-8")) for name, value in fields.items()]
    if file is not None:
        name, body, mime = file
        parts.append(b'--%s\r\nContent-Disposition: form-data; name="media"; filename="%s"\r\n'
                     b"Content-Type: %s\r\n\r\n" % (boundary.encode(), name.encode("utf-8"), mime.encode())
                     + body + b"\r\n")
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), "multipart/form-data; boundary=" + boundary
