"""A tiny HTTP server for HLS tests: GET serves files from a folder; PUT stores the request
body (Content-Length or chunked, as ffmpeg's hls muxer sends it) under the same path.
Prints "listening PORT" on stdout once the socket is bound, then one line per request on
stderr. Usage: python3 http_put_server.py PORT DIR
"""
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def target(self):
        rel = os.path.normpath(self.path.split("?", 1)[0].lstrip("/"))
        if rel.startswith(".."):
            raise ValueError("path escapes the root")
        return os.path.join(self.directory, rel)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_PUT(self):
        try:
            path = self.target()
            body = self.read_body()
        except (ValueError, OSError) as e:
            self.send_error(400, str(e))
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT


def main():
    port, root = int(sys.argv[1]), sys.argv[2]
    os.makedirs(root, exist_ok=True)

    def handler(*args, **kwargs):
        return Handler(*args, directory=root, **kwargs)

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), handler)
    print(f"listening {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
