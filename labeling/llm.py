"""The LLM client: any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

Configuration comes from the environment (CIRCUITRY_LLM_BASE_URL, CIRCUITRY_LLM_MODEL, and the key from
CIRCUITRY_LLM_API_KEY or OPENAI_API_KEY; local servers need none) or from an LLMConfig. Requests use
temperature 0, a seed and structured output (a JSON schema). Retries with exponential backoff on 429,
5xx, timeouts and dropped connections; other 4xx answers are final (retrying cannot fix them). The
openai client's own retries are off so that this policy is the only one. A semaphore caps the requests
in flight. Every answer the server gave (including refusals and malformed JSON) is cached on disk,
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

from discovery.errors import UserError

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


_REACHABLE: set[tuple] = set()  # endpoints checked in this process


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

    # reachability ------------------------------------------------------------------------------
    def check(self, timeout_s: float = 5.0) -> None:
        """One request (GET /models, no retries, at most timeout_s) before any labelling: a UserError
        in one line when the endpoint cannot be reached or refuses the key. Any other answer (a 404 from
        a server without /models, say) means it is there. Checked once per endpoint and process."""
        cfg, o = self.config, self._openai
        if (cfg.base_url, cfg.api_key) in _REACHABLE:
            return
        try:
            self.client.with_options(timeout=min(timeout_s, cfg.timeout_s), max_retries=0).models.list()
        except (o.APITimeoutError, o.APIConnectionError) as exc:
            what = "timed out" if isinstance(exc, o.APITimeoutError) else "refused or unreachable"
            raise UserError(f"LLM endpoint {cfg.base_url} is not reachable ({what}); start the server, fix "
                            f"{ENV_BASE_URL} / --base-url, or use --backend heuristic") from None
        except (o.AuthenticationError, o.PermissionDeniedError) as exc:
            raise UserError(f"LLM endpoint {cfg.base_url} refused the API key (HTTP {exc.status_code}); set "
                            f"{ENV_KEYS[0]}") from None
        except o.APIStatusError:
            pass  # it answered
        _REACHABLE.add((cfg.base_url, cfg.api_key))

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

    def chat(self, messages: list[dict], response_format: dict | None, template_version: str) -> ChatResult:
        cfg = self.config
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
                    raise LLMError(_describe(exc), usage) from None
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
        raise LLMError(f"gave up after {cfg.max_retries + 1} attempts: {_describe(last)}", usage)


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return "no answer"
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    return f"{kind} (HTTP {status})" if status is not None else kind
