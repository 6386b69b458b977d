"""A real HTTPS server on loopback standing in for the hub, for the agent's HTTP calls.

``serve_https(Handler)`` runs ``Handler`` (an ``http.server.BaseHTTPRequestHandler``) in
threads behind TLS with a certificate from a CA of its own, and yields the server's URL
and a client context that trusts that CA (``hubapi.verified_context``), as the agent's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from roost.agent import hubapi
from roost.pki.ca import CertificateAuthority, cert_to_pem
from roost.pki.keys import generate_key, key_to_pem


@contextlib.contextmanager
def serve_https(
    handler: type[http.server.BaseHTTPRequestHandler],
) -> Iterator[tuple[str, ssl.SSLContext]]:
    ca = CertificateAuthority.create()
    key = generate_key()
    cert = ca.issue_server(["localhost", "127.0.0.1"], key.public_key(), dt.timedelta(days=1))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        chain = Path(directory) / "server.pem"
        chain.write_bytes(key_to_pem(key) + cert_to_pem(cert).encode())
        server_context.load_cert_chain(chain)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", hubapi.verified_context(ca.cert_pem)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
