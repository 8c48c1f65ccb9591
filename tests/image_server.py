"""A throwaway image host for the tests: files served on 127.0.0.1 only, stopped when its `with` ends."""

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image as PILImage


def png(color="red", size_=(16, 12)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size_, color).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """Serves `files` ({path: bytes}) on 127.0.0.1; a path in `once` is served on its first request
    only (404 after), as a flaky host would. Counts requests per path."""

    def __init__(self, files: dict[str, bytes], once: tuple[str, ...] = ()):
        self.files, self.once, self.requests = files, set(once), {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                gone = self.path in server.once and server.requests[self.path] > 1
                body = None if gone else server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
