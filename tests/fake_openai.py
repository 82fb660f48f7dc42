"""A fake OpenAI-compatible server: a real HTTP server on 127.0.0.1 speaking Chat Completions (POST
/v1/chat/completions), scripted per test, as vLLM, Ollama, llama.cpp's server and LM Studio do. The real
`openai` client talks to it through OPENAI_BASE_URL.

    with FakeOpenAI([chat("learning rate 0.01"), status(429, retry_after="1.5")]) as s:
        env = s.env()        # OPENAI_BASE_URL (+ OPENAI_API_KEY when given a key)
        s.requests           # what arrived: path, Authorization header, JSON body, arrival time

Each chat request takes the next scripted answer; the last one repeats when the script runs out.
GET /v1/models lists `models` (None: 404, as a server without the endpoint). `like="llama-cpp-python"`
answers a response_format of type json_schema as llama-cpp-python 0.3.36 does (HTTP 500, pydantic's
message) without taking a scripted answer, and takes json_object (+ schema).
"""

import http.server
import json
import threading
import time

from fake_gemini import send_json

KEY = "sk-test-DO-NOT-LOG-51e0b2"


def chat(content, finish="stop", model="fake-model-7b-instruct", delay=0.0, reasoning_tokens=None, tokens=(110, 25)):
    """tokens: (prompt, completion) as usage counts them; completion includes reasoning_tokens, as OpenAI's does."""
    usage = {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": usage,
    }
    return {"status": 200, "body": body, "delay": delay, "headers": {}}


# What llama-cpp-python 0.3.36's server answers to response_format {"type": "json_schema", ...} (seen here,
# 2026-11-26): its route handler turns the request's validation error into a 500 with a multi-line message.
LLAMA_CPP_JSON_SCHEMA = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input "
    "should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}"
    '\n\n  File "/venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in create_chat_completion\n'
    "    POST /v1/chat/completions"
)


def status(code, retry_after=None, message=None, delay=0.0):
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": {"message": message or f"fake error {code}", "type": "fake", "code": code}}
    return {"status": code, "body": body, "delay": delay, "headers": headers}


class FakeOpenAI:
    def __init__(self, script, key=None, models=("fake-model-7b-instruct",), like=None):
        self.script, self.key, self.requests, self.models = list(script), key, [], models
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                fake.requests.append(
                    {
                        "path": self.path,
                        "time": time.monotonic(),
                        "body": None,
                        "auth": self.headers.get("Authorization"),
                    }
                )
                if self.path != "/v1/models" or fake.models is None:
                    return self._send(status(404, message="Not Found"))
                self._send(
                    {
                        "status": 200,
                        "headers": {},
                        "body": {
                            "object": "list",
                            "data": [{"id": m, "object": "model", "owned_by": "me", "created": 0} for m in fake.models],
                        },
                    }
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append(
                    {
                        "path": self.path,
                        "time": time.monotonic(),
                        "body": body,
                        "auth": self.headers.get("Authorization"),
                    }
                )
                if self.path != "/v1/chat/completions":
                    return self._send(status(404))
                if like == "llama-cpp-python" and (body.get("response_format") or {}).get("type") == "json_schema":
                    answer = status(500, message=LLAMA_CPP_JSON_SCHEMA)
                    answer["body"]["error"]["type"] = "internal_server_error"
                    return self._send(answer)
                answer = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                time.sleep(answer["delay"])
                self._send(answer)

            def _send(self, answer):
                send_json(self, answer["status"], answer["body"], answer.get("headers"))

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def env(self):
        env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{self.server.server_port}/v1"}
        if self.key:
            env["OPENAI_API_KEY"] = self.key
        return env

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
