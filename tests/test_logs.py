from __future__ import annotations

import io
import json
import logging

from kefu.node.serving.logs import configure_logging


def test_json_lines_with_fields_and_redaction() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    log = logging.getLogger("kefu.node.turn")
    log.info("turn", extra={"fields": {"session_id": "s1", "user": "13812345678", "seq": 2}})
    try:
        raise ValueError("customer a@b.com 13912345678 failed")
    except ValueError:
        log.exception("lookup failed for %s", "x@y.org")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["msg"] == "turn" and lines[0]["session_id"] == "s1" and lines[0]["seq"] == 2
    assert lines[0]["user"] == "<phone>"
    text = out.getvalue()
    for secret in ("13812345678", "a@b.com", "13912345678", "x@y.org"):
        assert secret not in text
    assert lines[1]["level"] == "error" and "ValueError" in lines[1]["error"]
