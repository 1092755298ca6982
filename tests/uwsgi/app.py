"""A WSGI app for tests/uwsgi.rs, served by Debian's uWSGI over the uwsgi protocol.

Answers every request with its CGI variables as JSON, plus the length and SHA-1 of the body
it read from wsgi.input.
"""
import hashlib
import json


def application(environ, start_response):
    h = hashlib.sha1()
    n = 0
    stream = environ["wsgi.input"]
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    info = {k: v for k, v in environ.items() if isinstance(v, str)}
    info["body_len"] = n
    info["body_sha1"] = h.hexdigest()
    out = json.dumps(info).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(out)))],
    )
    return [out]
