"""A fake OpenAI-compatible server: a real HTTP server on 127.0.0.1 speaking Chat Completions (POST
/v1/chat/completions), scripted per test, as vLLM, Ollama, llama.cpp's server and LM Studio do. The real
`openai` client talks to it through OPENAI_BASE_URL.

    with FakeOpenAI([chat("learning rate 0.01"), status(429, retry_after="1.5")]) as s:
        env = s.env()        # OPENAI_BASE_URL (+ OPENAI_API_KEY when given a key)
        s.requests           # what arrived: path, Authorization header, JSON body, arrival time

Each request takes the next scripted answer; the last one repeats when the script runs out.
"""

import http.server
import json
import threading
import time

from fake_gemini import send_json

KEY = "sk-test-DO-NOT-LOG-51e0b2"


def chat(content, finish="stop", model="fake-model-7b-instruct", delay=0.0, reasoning_tokens=None):
    usage = {"prompt_tokens": 110, "completion_tokens": 25, "total_tokens": 135}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    body = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": usage}
    return {"status": 200, "body": body, "delay": delay, "headers": {}}


def status(code, retry_after=None, message=None, delay=0.0):
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": {"message": message or f"fake error {code}", "type": "fake", "code": code}}
    return {"status": code, "body": body, "delay": delay, "headers": headers}


class FakeOpenAI:
    def __init__(self, script, key=None):
        self.script, self.key, self.requests = list(script), key, []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append({"path": self.path, "time": time.monotonic(), "body": body,
                                      "auth": self.headers.get("Authorization")})
                if self.path != "/v1/chat/completions":
                    return self._send(status(404))
                answer = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                time.sleep(answer["delay"])
                self._send(answer)

            def _send(self, answer):
                send_json(self, answer["status"], answer["body"], answer["headers"])

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
