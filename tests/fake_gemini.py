"""A fake Gemini: a real HTTP server on 127.0.0.1 speaking generateContent (on /v1/ and /v1beta/), scripted
per test. The real google-genai client talks to it through GOOGLE_GEMINI_BASE_URL.

    with FakeGemini([reply("learning rate 0.01"), error(429, retry_delay="1.5s")]) as g:
        env = g.env()  # GOOGLE_GEMINI_BASE_URL + a test key
        ...
        g.requests  # what arrived: path, key header, JSON body, arrival time

Each request consumes the next scripted answer; the last one repeats when the script runs out.
"""

import http.server
import json
import re
import threading
import time

KEY = "test-key-DO-NOT-LOG-7f3a9c"
PUBLISHED_REPLY = (
    "A recommended new learning rate would be **0.01**.\n\nReasoning: the loss is high and flat after "
    "one epoch; a smaller step should let the optimizer settle into a minimum."
)


def reply(text, finish="STOP", version="gemini-fake-001", delay=0.0, tokens=(120, 30, None)):
    """tokens: (prompt, reply, thinking) as usageMetadata counts them; thinking None: not reported."""
    parts = [{"text": text}] if text is not None else []
    usage = {
        "promptTokenCount": tokens[0],
        "candidatesTokenCount": tokens[1],
        "totalTokenCount": sum(t or 0 for t in tokens),
    }
    if tokens[2] is not None:
        usage["thoughtsTokenCount"] = tokens[2]
    body = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage,
        "modelVersion": version,
        "responseId": "fake",
    }
    return {"status": 200, "body": body, "delay": delay}


def error(code, status="RESOURCE_EXHAUSTED", retry_delay=None, quota_id="GenerateRequestsPerMinutePerProjectPerModel"):
    details = []
    if code == 429:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests", "quotaId": quota_id}
                ],
            }
        )
    if retry_delay:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    status = status if code == 429 else {500: "INTERNAL", 503: "UNAVAILABLE"}.get(code, "UNKNOWN")
    return {
        "status": code,
        "body": {"error": {"code": code, "message": f"fake {status}", "status": status, "details": details}},
        "delay": 0.0,
    }


def send_json(handler, status, body, headers=None):
    """Answer a request with a JSON body (also used by fake_openai.py)."""
    data = json.dumps(body).encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
        pass


class FakeGemini:
    PATH = re.compile(r"^/(v1|v1beta)/models/([^/:]+):generateContent$")

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                m = FakeGemini.PATH.match(self.path.split("?")[0])
                fake.requests.append(
                    {
                        "path": self.path,
                        "time": time.monotonic(),
                        "body": body,
                        "key": self.headers.get("x-goog-api-key"),
                    }
                )
                if not m:
                    return self._send(404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})
                answer = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                time.sleep(answer["delay"])
                self._send(answer["status"], answer["body"])

            def _send(self, status, body):
                send_json(self, status, body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_port}"

    def env(self):
        return {"GOOGLE_GEMINI_BASE_URL": self.url, "GOOGLE_API_KEY": KEY}

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
