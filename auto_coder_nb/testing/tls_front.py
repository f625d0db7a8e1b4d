"""A TLS front for the tests: terminates TLS on 127.0.0.1 with a certificate from a private CA and forwards each
connection to a plain HTTP server on another port, as a corporate gateway that re-signs TLS does."""

from __future__ import annotations

import select
import socket
import ssl
import threading


class TLSFront:
    """TLS on `self.port` in front of the plain HTTP server on `target_port`."""

    def __init__(self, target_port: int, context: ssl.SSLContext) -> None:
        self.target_port = target_port
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes_failed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            connection.close()
            return
        with secure, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            try:
                while True:
                    ready = [secure] if secure.pending() else select.select([secure, upstream], [], [], 60)[0]
                    if not ready:
                        return
                    for source in ready:
                        data = source.recv(65536)
                        if not data:
                            return
                        (upstream if source is secure else secure).sendall(data)
            except (ssl.SSLError, OSError):
                return
