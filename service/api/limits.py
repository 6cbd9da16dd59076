"""Request body size limit, enforced before the body is parsed (Content-Length, and counted for
chunked bodies), answered as problem+json 413."""

from __future__ import annotations

import json


class _TooLarge(Exception):
    pass


def problem_bytes(status: int, title: str, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(send)
        if not any(name == b"content-length" for name, _ in scope.get("headers", [])):
            # a chunked body (no length given): read it here, up to the limit, so that a body too large
            # is a 413 from us rather than a parse error from the framework
            chunks, seen = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    return await self._reject(send)
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body, replayed = b"".join(chunks), False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # http.disconnect, when it comes

            return await self.app(scope, replay, send)
        seen = 0
        started = False

        async def counted_receive():  # a body longer than its Content-Length is cut by the server itself
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._reject(send)
        except BaseExceptionGroup as group:  # anyio task groups wrap it
            if group.subgroup(_TooLarge) is None or started:
                raise
            await self._reject(send)

    async def _reject(self, send):
        body = problem_bytes(413, "Request body too large",
                             f"the request body is larger than {self.max_bytes} bytes; send fewer inline rows "
                             "(or ask the operator to raise CIRCUITRY_MAX_BODY_BYTES)")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
