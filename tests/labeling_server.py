"""A chat-completions server on loopback for the LLM labeler tests: the real `openai` client talks HTTP to it.

Like a real OpenAI-compatible server it answers chat completions only at `/v1/chat/completions` (404
elsewhere, e.g. for a base URL without `/v1`); `requests` holds the bodies of those it answered.
Each request takes the next behaviour from `script` (FIFO; "ok" when empty): "ok", "429", "500", "400",
"timeout" (answers only after `sleep_s`), "malformed" (200 with content that is not JSON) or "refusal".
An "ok" answer comes from `responder(body) -> str`, by default a schema-valid canned answer chosen by
the request's response_format name."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def canned(body: dict) -> str:
    name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    if name == "component_label":
        comp = re.search(r"component: (\S+)", body["messages"][1]["content"])
        return json.dumps({"label": f"LLM label for {comp.group(1) if comp else '?'}",
                           "description": "A canned description from the test server. It cites nothing.",
                           "role_tags": ["other"], "confidence": 0.25})
    if name == "pair_scores":
        # a scorer that believes the label literally: "previous" -> the key right before the query
        label = re.search(r'^label: "(.*)"$', user, flags=re.M)
        expl = label.group(1).lower() if label else ""
        scores = []
        for k, i, j in re.findall(r"^(\d+)\. query @(\d+) .*? -> key @(\d+)", user, flags=re.M):
            p = 1.0 if ("previous" in expl and int(j) == int(i) - 1) else 0.0 if "previous" in expl else 0.5
            scores.append({"id": int(k), "p": p})
        return json.dumps({"scores": scores})
    if name == "context_scores":
        ids = re.findall(r"^(\d+)\. ", user.split("<contexts")[-1], flags=re.M)
        return json.dumps({"scores": [{"id": int(k), "p": 0.5} for k in ids]})
    return "{}"


class FakeLLM:
    def __init__(self, responder=canned, sleep_s: float = 1.5):
        self.responder = responder
        self.sleep_s = sleep_s
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.behaviours: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    fake._send(self, 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                with fake._lock:
                    fake.requests.append(body)
                    behaviour = fake.script.pop(0) if fake.script else "ok"
                    fake.behaviours.append(behaviour)
                try:
                    fake._answer(self, body, behaviour)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _send(self, handler, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, handler, body: dict, behaviour: str):
        if behaviour in ("429", "500", "400"):
            self._send(handler, int(behaviour), {"error": {"message": f"injected {behaviour}", "type": "test"}},
                       {"retry-after": "0"} if behaviour == "429" else None)
            return
        if behaviour == "timeout":
            time.sleep(self.sleep_s)
        content, refusal = self.responder(body), None
        if behaviour == "malformed":
            content = 'this is not JSON {"label": '
        elif behaviour == "refusal":
            content, refusal = None, "I can't help with that."
        self._send(handler, 200, {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}})
