"""The LLM client: any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

Configuration comes from the environment (CIRCUITRY_LLM_BASE_URL, CIRCUITRY_LLM_MODEL, and the key from
CIRCUITRY_LLM_API_KEY or OPENAI_API_KEY; local servers need none) or from an LLMConfig. Requests use
temperature 0, a seed and structured output (a JSON schema). Retries with exponential backoff on 429,
5xx, timeouts and dropped connections; other 4xx answers are final (retrying cannot fix them). The
openai client's own retries are off so that this policy is the only one. A semaphore caps the requests
in flight. Before any work the endpoint is asked for a real one-token completion (LLMClient.check), so a
wrong base URL (one without `/v1` answers 404), an unknown model or a refused key is one line at once;
during the run, more than `max_failures` failed calls stop it (LLMStopped, a UserError: one line, exit 2)
instead of leaving every later label `llm_failed`. Every answer the server gave (including refusals and malformed JSON) is cached on disk,
content-addressed by model, template version and the full request, so a re-run sends nothing."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from discovery.core.errors import UserError

from .schema import Usage

ENV_BASE_URL = "CIRCUITRY_LLM_BASE_URL"
ENV_MODEL = "CIRCUITRY_LLM_MODEL"
ENV_KEYS = ("CIRCUITRY_LLM_API_KEY", "OPENAI_API_KEY")


def default_cache_dir() -> Path:
    home = os.environ.get("CIRCUITRY_HOME")
    return Path(home) / "cache" / "llm" if home else Path.home() / ".cache" / "circuitry" / "llm"


def llm_configured() -> bool:
    return bool(os.environ.get(ENV_BASE_URL) and os.environ.get(ENV_MODEL))


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)  # never written to any output
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first wait; doubles per retry
    max_backoff_s: float = 30.0
    concurrency: int = 4
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 1000
    max_failures: int = 3  # failed calls (after retries) tolerated in one run; the next one stops it
    cache_dir: Path | None = None  # None: default_cache_dir() at use
    use_cache: bool = True

    @classmethod
    def from_env(cls, **overrides) -> "LLMConfig":
        base_url = overrides.pop("base_url", None) or os.environ.get(ENV_BASE_URL)
        model = overrides.pop("model", None) or os.environ.get(ENV_MODEL)
        missing = [n for n, v in ((ENV_BASE_URL, base_url), (ENV_MODEL, model)) if not v]
        if missing:
            raise UserError(f"the openai backend needs {' and '.join(missing)} (an OpenAI-compatible endpoint, e.g. "
                            "http://localhost:8000/v1 for vLLM, and a model name); or use --backend heuristic")
        key = overrides.pop("api_key", None) or next((os.environ[k] for k in ENV_KEYS if os.environ.get(k)), None)
        return cls(base_url=base_url, model=model, api_key=key, **overrides)

    def with_(self, **kw) -> "LLMConfig":
        return replace(self, **kw)


class LLMError(Exception):
    """A request that did not produce an answer: retries exhausted, or a final 4xx."""

    def __init__(self, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.usage = usage or Usage()


class LLMStopped(UserError):
    """More than max_failures calls failed: the run stops (the endpoint is down or rejects every request)."""


@dataclass
class ChatResult:
    content: str | None
    refusal: str | None
    usage: Usage
    cache_key: str
    cached: bool


def cache_key(model: str, template_version: str, messages: list[dict], response_format: dict | None,
              temperature: float, seed: int, max_tokens: int) -> str:
    blob = json.dumps({"model": model, "template_version": template_version, "messages": messages,
                       "response_format": response_format, "temperature": temperature, "seed": seed,
                       "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


_REACHABLE: set[tuple] = set()  # (endpoint, key, model) checked in this process
CHECK_MESSAGES = [{"role": "user", "content": "Reply with the single word OK."}]
CHECK_TOKENS = 1
CHECK_CONNECT_S = 5.0


class LLMClient:
    def __init__(self, config: LLMConfig):
        import openai

        self.config = config
        self._openai = openai
        # max_retries=0: the retry policy is ours (no retry on 4xx other than 429; our backoff)
        self.client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key or "not-needed",
                                    max_retries=0, timeout=config.timeout_s)
        self.cache_dir = Path(config.cache_dir) if config.cache_dir is not None else default_cache_dir()
        self._slots = threading.BoundedSemaphore(max(1, config.concurrency))
        self._failures = 0  # calls that raised LLMError in this client's run
        self._stopped: str | None = None  # the one-line reason, once more than max_failures calls failed
        self._lock = threading.Lock()

    # reachability ------------------------------------------------------------------------------
    def check(self, connect_s: float = CHECK_CONNECT_S) -> None:
        """Before any labelling: one real chat completion of at most CHECK_TOKENS tokens (no retries, no
        cache; connecting within connect_s, answering within the request timeout). A UserError in one line
        when the endpoint cannot be reached, refuses the key, answers an error status (404: usually a base
        URL without `/v1`, or a model the server does not serve) or answers something that is not a chat
        completion. Checked once per endpoint, model and key in a process."""
        import httpx

        cfg, o = self.config, self._openai
        key = (cfg.base_url, cfg.api_key, cfg.model)
        if key in _REACHABLE:
            return
        where = f"LLM endpoint {cfg.base_url}"
        try:
            resp = self.client.with_options(timeout=httpx.Timeout(cfg.timeout_s, connect=min(connect_s, cfg.timeout_s)),
                                            max_retries=0).chat.completions.create(
                model=cfg.model, messages=CHECK_MESSAGES, max_tokens=CHECK_TOKENS, temperature=0)
        except (o.APITimeoutError, o.APIConnectionError) as exc:
            what = "timed out" if isinstance(exc, o.APITimeoutError) else "refused or unreachable"
            raise UserError(f"{where} is not reachable ({what}); start the server, fix "
                            f"{ENV_BASE_URL} / --base-url, or use --backend heuristic") from None
        except (o.AuthenticationError, o.PermissionDeniedError) as exc:
            raise UserError(f"{where} refused the API key (HTTP {exc.status_code}); set {ENV_KEYS[0]}") from None
        except o.NotFoundError:
            raise UserError(f"{where} answered HTTP 404 to a one-token chat completion for model '{cfg.model}': the "
                            "base URL of an OpenAI-compatible server usually ends in /v1 (e.g. "
                            "http://localhost:8000/v1), and the model must be one it serves (--llm-model)") from None
        except o.APIStatusError as exc:
            raise UserError(f"{where} answered a one-token chat completion for model '{cfg.model}' with "
                            f"{_status_text(exc)}; fix {ENV_BASE_URL} / --base-url or --llm-model") from None
        except o.APIResponseValidationError:
            resp = None
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            raise UserError(f"{where} answered, but not with a chat completion (is it an OpenAI-compatible API? the "
                            "base URL usually ends in /v1)")
        _REACHABLE.add(key)

    # cache -------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read(self, key: str) -> dict | None:
        if not self.config.use_cache:
            return None
        try:
            data = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None  # missing or damaged: ask again
        return data if isinstance(data, dict) and data.get("key") == key else None

    def _write(self, key: str, entry: dict) -> None:
        if not self.config.use_cache:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(entry, ensure_ascii=False))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one

    # requests ------------------------------------------------------------------------------------
    def _retryable(self, exc: Exception) -> bool:
        o = self._openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True
        return isinstance(exc, o.APIStatusError) and (exc.status_code in (408, 429) or exc.status_code >= 500)

    def _wait(self, attempt: int, exc: Exception) -> float:
        delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** attempt)
        response = getattr(exc, "response", None)
        after = response.headers.get("retry-after") if response is not None else None
        try:
            delay = max(delay, min(float(after), self.config.max_backoff_s)) if after is not None else delay
        except ValueError:
            pass
        return delay * random.uniform(0.8, 1.0)  # jitter: concurrent workers do not retry in lockstep

    def _failed(self, error: LLMError) -> LLMError:
        """Count a failed call; past max_failures the run stops (LLMStopped) instead of going on failing."""
        with self._lock:
            self._failures += 1
            if self._failures > self.config.max_failures and self._stopped is None:
                self._stopped = (f"stopped after {self._failures} failed LLM calls to {self.config.base_url} "
                                 f"(model '{self.config.model}'; the last: {error}); fix the endpoint or use "
                                 "--backend heuristic")
            if self._stopped is not None:
                raise LLMStopped(self._stopped)
        return error

    def chat(self, messages: list[dict], response_format: dict | None, template_version: str) -> ChatResult:
        cfg = self.config
        if self._stopped is not None:
            raise LLMStopped(self._stopped)
        key = cache_key(cfg.model, template_version, messages, response_format, cfg.temperature, cfg.seed,
                        cfg.max_tokens)
        hit = self._read(key)
        if hit is not None:
            return ChatResult(hit.get("content"), hit.get("refusal"), Usage(cached=1), key, True)
        usage = Usage()
        last = None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                usage.retries += 1
                time.sleep(self._wait(attempt - 1, last))
            usage.calls += 1
            try:
                with self._slots:
                    kwargs = {"response_format": response_format} if response_format is not None else {}
                    resp = self.client.chat.completions.create(
                        model=cfg.model, messages=messages, temperature=cfg.temperature, seed=cfg.seed,
                        max_tokens=cfg.max_tokens, **kwargs)
            except self._openai.APIError as exc:
                last = exc
                if not self._retryable(exc):
                    raise self._failed(LLMError(_describe(exc, cfg.timeout_s), usage)) from None
                continue
            if resp.usage is not None:
                usage.prompt_tokens += resp.usage.prompt_tokens or 0
                usage.completion_tokens += resp.usage.completion_tokens or 0
            msg = resp.choices[0].message if resp.choices else None
            content = msg.content if msg is not None else None
            refusal = getattr(msg, "refusal", None) if msg is not None else None
            self._write(key, {"key": key, "model": cfg.model, "template_version": template_version,
                              "content": content, "refusal": refusal,
                              "usage": {"prompt_tokens": usage.prompt_tokens,
                                        "completion_tokens": usage.completion_tokens}})
            return ChatResult(content, refusal, usage, key, False)
        raise self._failed(LLMError(f"gave up after {cfg.max_retries + 1} attempts: "
                                    f"{_describe(last, cfg.timeout_s)}", usage))


def _server_message(exc) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            text = " ".join(str(msg).split())
            return text if len(text) <= 160 else text[:159] + "\u2026"
    return None


def _status_text(exc) -> str:
    """'HTTP 404 (Not Found: the server's message)' for an error status answer."""
    from http import HTTPStatus

    code = exc.status_code
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "error"
    msg = _server_message(exc)
    return f"HTTP {code} ({phrase}{': ' + msg if msg else ''})"


def _describe(exc: Exception | None, timeout_s: float | None = None) -> str:
    """A failed request in words a person reads (no exception class names)."""
    import openai

    if exc is None:
        return "no answer"
    if isinstance(exc, openai.APITimeoutError):
        return f"the request timed out{f' after {timeout_s:g} s' if timeout_s else ''}"
    if isinstance(exc, openai.APIConnectionError):
        return "the connection to the endpoint failed"
    if isinstance(exc, openai.APIStatusError):
        return f"the endpoint answered {_status_text(exc)}"
    return f"the request failed ({' '.join(str(exc).split())[:160] or 'no detail'})"
