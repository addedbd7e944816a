#!/usr/bin/env python3
"""Contract tests of the project's OpenAI and Pinecone emulators against the official SDKs.

Every test of the fleet's OpenAI and Pinecone paths runs against the emulators in
`tests/src/openai.rs` and `tests/src/pinecone.rs`; this check keeps them honest. It drives both
emulators with the pinned `openai` and `pinecone` SDKs (`requirements.txt`) and validates every
answer against the SDKs' own models:

- OpenAI: every batch object with `openai.types.Batch` in pydantic's strict mode, and with every
  field of the model present (the real API sends them all, null or not); output-file lines with
  `ChatCompletion` (strict); error bodies with `ErrorObject`; the error paths (401, 404, 429
  with `Retry-After`/`retry-after-ms`, `insufficient_quota`, 5xx, a truncated download) as the
  SDK raises them; `x-request-id` on every answer.
- Pinecone: fetch and update answers decoded strictly (msgspec) into the SDK's
  `FetchResponse`/`UpdateResponse`, error bodies in the data plane's `{code, message, details}`
  shape, and the SDK's exceptions for 401, 429 (with `Retry-After`), 5xx, and the gateway's 400
  (API version) and 414 (URL length).

It starts nothing itself: `contract-check` (tests/src/bin/contract_check.rs) starts and seeds
both emulators and passes their URLs. `--self-check` then breaks a copy of every answer the
check saw, a field removed or given a wrong type at a time, and asserts the validator rejects
each copy: a validator that accepts anything would otherwise pass silently.

Prints one line per check and closes with `N passed, M failed`; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import traceback
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx
import msgspec
import openai
import pydantic
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject
from pinecone import Pinecone
from pinecone._internal.config import RetryConfig
from pinecone.errors.exceptions import ApiError as PineconeApiError
from pinecone.errors.exceptions import RateLimitError as PineconeRateLimitError
from pinecone.errors.exceptions import ServiceError as PineconeServiceError
from pinecone.errors.exceptions import UnauthorizedError as PineconeUnauthorizedError
from pinecone.models.vectors.responses import FetchResponse, UpdateResponse

OPENAI_KEY = "sk-contract-0123456789"
PINECONE_KEY = "pcsk-contract-0123456789"
# The version the fleet's client pins, and the one this SDK sends itself.
FLEET_PINECONE_VERSION = "2025-10"
NS = "words"


# --- validators ---------------------------------------------------------------------------


class Rejected(Exception):
    """The validator refused an answer."""


def present(data: Any, path: str) -> bool:
    """Whether a dotted path (`error.code`) exists in nested dicts."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def wrong_type(value: Any) -> Any:
    """A JSON value of another type than `value`, that no field typed like it accepts."""
    if value is None:
        return [[]]
    if isinstance(value, bool):
        return "not-a-bool"
    if isinstance(value, (int, float)):
        return "not-a-number"
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return {"not": "a list"}
    return ["not", "an", "object"]


@dataclass
class Mutation:
    """One way to break an answer: `path` (keys and list indexes from the root) removed, or
    replaced by `value`; an empty path replaces the whole answer."""

    description: str
    path: list[Any]
    remove: bool = False
    value: Any = None

    def apply(self, data: Any) -> Any:
        if not self.path:
            return self.value
        out = copy.deepcopy(data)
        node = out
        for part in self.path[:-1]:
            node = node[part]
        if self.remove:
            del node[self.path[-1]]
        else:
            node[self.path[-1]] = self.value
        return out


def removal(path: list[Any]) -> Mutation:
    return Mutation(f"{show(path)} removed", path, remove=True)


def retyping(path: list[Any], value: Any) -> Mutation:
    return Mutation(f"{show(path) or 'the answer'} of a wrong type", path, value=wrong_type(value))


def show(path: list[Any]) -> str:
    return ".".join(str(p) for p in path)


class Validator:
    """Validates one kind of answer and breaks copies of it for the self-check."""

    name: str
    #: Dotted paths the real service always sends (null or not): their absence is an error
    #: even where the SDK's model has a default.
    always: tuple[str, ...]

    def validate(self, data: Any) -> None:
        self._validate(data)
        missing = [p for p in self.always if not present(data, p)]
        if missing:
            raise Rejected(f"{self.name}: missing {', '.join(missing)}")

    def _validate(self, data: Any) -> None:
        raise NotImplementedError

    def mutations(self, data: Any) -> Iterator[Mutation]:
        """The whole answer of a wrong type, then every field the models name."""
        yield retyping([], data)
        yield from self._fields(data)

    def _fields(self, data: Any) -> Iterator[Mutation]:
        raise NotImplementedError


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """The pydantic models an annotation can hold directly (through Optional/Union/Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin is typing.Union or str(origin) == "types.UnionType":
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return []


def _list_models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """The pydantic models of a list's items (through Optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "types.UnionType":
        return [m for a in typing.get_args(annotation) for m in _list_models_in(a)]
    if origin in (list, typing.List):
        (item,) = typing.get_args(annotation) or (Any,)
        return _models_in(item)
    return []


class ModelValidator(Validator):
    """Strict pydantic validation with one of the SDK's models (openai-python)."""

    def __init__(self, name: str, model: type[pydantic.BaseModel], always: tuple[str, ...] = ()):
        self.name = name
        self.model = model
        self.always = always

    def _validate(self, data: Any) -> None:
        try:
            self.model.model_validate(data, strict=True)
        except pydantic.ValidationError as e:
            raise Rejected(f"{self.name}: {e.error_count()} errors: {e.errors()[0]}") from e

    def _fields(self, data: Any) -> Iterator[Mutation]:
        always = {tuple(p.split(".")) for p in self.always}
        yield from self._walk(self.model, data, [], always)

    def _walk(self, model, data, path, always) -> Iterator[Mutation]:
        if not isinstance(data, dict):
            return
        for name, info in model.model_fields.items():
            key = info.alias or name
            if key not in data:
                continue
            here = path + [key]
            if info.is_required() or tuple(str(p) for p in here) in always:
                yield removal(here)
            yield retyping(here, data[key])
            value = data[key]
            for sub in _models_in(info.annotation):
                if isinstance(value, dict) and _fits(sub, value):
                    yield from self._walk(sub, value, here, always)
                    break
            items = _list_models_in(info.annotation)
            if items and isinstance(value, list):
                for i, item in enumerate(value):
                    for sub in items:
                        if _fits(sub, item):
                            yield from self._walk(sub, item, here + [i], always)
                            break


def _fits(model: type[pydantic.BaseModel], value: Any) -> bool:
    try:
        model.model_validate(value, strict=True)
        return True
    except pydantic.ValidationError:
        return False



class StructValidator(Validator):
    """Strict msgspec decoding into one of the SDK's structs (pinecone), as the SDK decodes."""

    def __init__(self, name: str, struct: type, always: tuple[str, ...] = ()):
        self.name = name
        self.struct = struct
        self.always = always

    def _validate(self, data: Any) -> None:
        try:
            msgspec.json.decode(json.dumps(data).encode(), type=self.struct)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise Rejected(f"{self.name}: {e}") from e

    def _fields(self, data: Any) -> Iterator[Mutation]:
        always = {tuple(p.split(".")) for p in self.always}
        yield from self._walk(msgspec.inspect.type_info(self.struct), data, [], always)

    def _walk(self, info, data, path, always) -> Iterator[Mutation]:
        if not isinstance(data, dict):
            return
        for f in info.fields:
            key = f.encode_name
            if key not in data:
                continue
            here = path + [key]
            if f.required or tuple(str(p) for p in here) in always:
                yield removal(here)
            yield retyping(here, data[key])
            yield from self._nested(f.type, data[key], here, always)

    def _nested(self, t, value, path, always) -> Iterator[Mutation]:
        inspect = msgspec.inspect
        if isinstance(t, inspect.UnionType):
            for member in t.types:
                yield from self._nested(member, value, path, always)
        elif isinstance(t, inspect.StructType) and isinstance(value, dict):
            yield from self._walk(t, value, path, always)
        elif isinstance(t, inspect.DictType) and isinstance(value, dict):
            for k, v in value.items():
                yield from self._nested(t.value_type, v, path + [k], always)
        elif isinstance(t, inspect.ListType) and isinstance(value, list):
            for i, v in enumerate(value):
                yield from self._nested(t.item_type, v, path + [i], always)


class OpenAiErrorBody(pydantic.BaseModel):
    """`{"error": {...}}` of every OpenAI error answer, the inner object being the SDK's."""

    error: ErrorObject


class PineconeErrorBody(msgspec.Struct):
    """The data plane's error answer (gRPC-style code)."""

    code: int
    message: str
    details: list


class OutputLineEnvelope(pydantic.BaseModel):
    """One line of a batch output or error file (the SDK has no model of the line itself;
    its `response.body` is a `ChatCompletion` or an error body)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    class Response(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        status_code: int
        request_id: str
        body: dict

    class LineError(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        code: str
        message: str

    id: str
    custom_id: str
    response: Response | None
    error: LineError | None


BATCH = ModelValidator("Batch", Batch, always=tuple(Batch.model_fields))
CHAT = ModelValidator("ChatCompletion", ChatCompletion)
LINE = ModelValidator(
    "output line", OutputLineEnvelope, always=("id", "custom_id", "response", "error")
)
OPENAI_ERROR = ModelValidator(
    "OpenAI error body",
    OpenAiErrorBody,
    always=("error.message", "error.type", "error.param", "error.code"),
)
FETCH = StructValidator("FetchResponse", FetchResponse, always=("vectors", "namespace", "usage"))
UPDATE = StructValidator("UpdateResponse", UpdateResponse)
PINECONE_ERROR = StructValidator("Pinecone error body", PineconeErrorBody)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Sample:
    validator: Validator
    data: Any
    where: str


@dataclass
class Run:
    passed: int = 0
    failed: int = 0
    samples: list[Sample] = field(default_factory=list)

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        try:
            note = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            if not isinstance(e, (AssertionError, Rejected)):
                traceback.print_exc(limit=3)
        else:
            self.passed += 1
            print(f"ok   {name}" + (f" ({note})" if note else ""))

    def valid(self, validator: Validator, data: Any, where: str) -> None:
        """Validates an answer and keeps it for the self-check."""
        validator.validate(data)
        self.samples.append(Sample(validator, data, where))


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def request_id_of(headers: httpx.Headers, prefix: str = "") -> str:
    rid = headers.get("x-request-id")
    expect(bool(rid), "no x-request-id")
    expect(rid.startswith(prefix), f"x-request-id {rid!r} does not start with {prefix!r}")
    return rid


def retry_headers(headers: httpx.Headers) -> tuple[int, int]:
    """`Retry-After` (seconds) and `retry-after-ms`, both present and consistent."""
    ra, ms = headers.get("retry-after"), headers.get("retry-after-ms")
    expect(ra is not None and ra.isdigit(), f"Retry-After {ra!r}")
    expect(ms is not None and ms.isdigit(), f"retry-after-ms {ms!r}")
    expect(int(ra) == math.ceil(int(ms) / 1000), f"Retry-After {ra} vs retry-after-ms {ms}")
    return int(ra), int(ms)


class Admin:
    """The emulators' control API (`/_admin/…`)."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, timeout=10)

    def post(self, path: str, body: Any) -> None:
        r = self.http.post(path, content=json.dumps(body))
        expect(r.status_code in (201, 204), f"admin {path}: {r.status_code} {r.text}")

    def delete(self, path: str) -> None:
        r = self.http.delete(path)
        expect(r.status_code in (204, 404), f"admin {path}: {r.status_code}")

    def requests(self) -> list[dict]:
        return self.http.get("/_admin/requests").json()


def openai_checks(run: Run, url: str) -> None:
    admin = Admin(url)
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=f"{url}/v1", max_retries=0, timeout=10)
    retrying = client.with_options(max_retries=2)

    def batch_answer(batch_id: str, call=None) -> dict:
        raw = (call or client.batches.with_raw_response.retrieve)(batch_id)
        request_id_of(raw.headers, "req_")
        data = raw.http_response.json()
        run.valid(BATCH, data, f"batch {batch_id}")
        parsed = raw.parse()
        expect(isinstance(parsed, Batch), "the SDK parses a Batch")
        expect(parsed.id == batch_id, f"id {parsed.id}")
        return data

    def scripted() -> None:
        seen = [batch_answer("batch_scripted")["status"] for _ in range(4)]
        expect(seen == ["validating", "in_progress", "finalizing", "completed"], f"{seen}")
        final = batch_answer("batch_scripted")
        expect(final["output_file_id"] == "file-out", "output file")
        expect(final["metadata"] == {"pipeline": "labels"}, "metadata")
        expect(final["completed_at"] is not None and final["failed_at"] is None, "timestamps")

    run.check("openai: a batch through its statuses is a strict Batch each time", scripted)

    def failed() -> None:
        data = batch_answer("batch_failed")
        expect(data["status"] == "failed", data["status"])
        expect(data["errors"]["data"][0]["line"] == 3, f"{data['errors']}")
        data = batch_answer("batch_failed_null")
        expect(data["errors"] == {"object": "list", "data": None}, f"{data['errors']}")

    run.check("openai: failed batches, with errors and with errors.data null", failed)

    def no_output() -> None:
        data = batch_answer("batch_no_output")
        expect(data["status"] == "completed", data["status"])
        expect(data["output_file_id"] is None and data["error_file_id"] == "file-err", "files")
        data = batch_answer("batch_expired")
        expect(data["status"] == "expired" and data["expired_at"] is not None, "expired")

    run.check("openai: completed without output, expired", no_output)

    def cancel() -> None:
        batch_answer("batch_cancel")
        data = batch_answer("batch_cancel", client.batches.with_raw_response.cancel)
        expect(data["status"] == "cancelling" and data["cancelling_at"] is not None, "cancel")
        statuses = [batch_answer("batch_cancel")["status"] for _ in range(2)]
        expect(statuses == ["cancelling", "cancelled"], f"{statuses}")

    run.check("openai: cancel answers strict Batch objects", cancel)

    def output_lines() -> None:
        content = client.files.content("file-out").content
        lines = [line for line in content.decode().splitlines() if line.strip()]
        expect(len(lines) == 5, f"{len(lines)} lines")
        completions = 0
        for i, line in enumerate(lines):
            data = json.loads(line)
            run.valid(LINE, data, f"file-out line {i + 1}")
            response = data["response"]
            if response and response["status_code"] == 200:
                run.valid(CHAT, response["body"], f"file-out line {i + 1} body")
                ChatCompletion.model_validate(response["body"], strict=True)
                completions += 1
            elif response:
                run.valid(OPENAI_ERROR, response["body"], f"file-out line {i + 1} error body")
        expect(completions == 3, f"{completions} completions")
        for i, line in enumerate(client.files.content("file-err").content.decode().splitlines()):
            if line.strip():
                run.valid(LINE, json.loads(line), f"file-err line {i + 1}")

    run.check("openai: output and error file lines (ChatCompletion bodies, strict)", output_lines)

    def not_found() -> None:
        try:
            client.batches.retrieve("batch_missing")
        except openai.NotFoundError as e:
            expect(e.status_code == 404, f"{e.status_code}")
            expect(e.request_id is not None and e.request_id.startswith("req_"), "request id")
            run.valid(OPENAI_ERROR, e.response.json(), "404 body")
        else:
            raise AssertionError("no NotFoundError")
        try:
            client.files.content("file-missing")
        except openai.NotFoundError as e:
            run.valid(OPENAI_ERROR, e.response.json(), "404 file body")
        else:
            raise AssertionError("no NotFoundError for a file")

    run.check("openai: 404 of a batch and of a file", not_found)

    def unauthorized() -> None:
        admin.post("/_admin/reject_keys", {"seconds": None})
        try:
            client.batches.retrieve("batch_expired")
        except openai.AuthenticationError as e:
            expect(e.status_code == 401, f"{e.status_code}")
            expect(e.code == "invalid_api_key", f"code {e.code}")
            request_id_of(e.response.headers, "req_")
            run.valid(OPENAI_ERROR, e.response.json(), "401 body")
        else:
            raise AssertionError("no AuthenticationError")
        finally:
            admin.delete("/_admin/reject_keys")
        client.batches.retrieve("batch_expired")

    run.check("openai: a rejected key is a 401 AuthenticationError, then accepted", unauthorized)

    def rate_limited() -> None:
        fault = {"type": "status", "status": 429, "path_prefix": "/v1/batches/"}
        admin.post("/_admin/faults", fault)
        try:
            client.batches.retrieve("batch_expired")
        except openai.RateLimitError as e:
            expect(e.code == "rate_limit_exceeded", f"code {e.code}")
            retry_headers(e.response.headers)
            request_id_of(e.response.headers, "req_")
            run.valid(OPENAI_ERROR, e.response.json(), "429 body")
        else:
            raise AssertionError("no RateLimitError")
        # The SDK's own retry honours the wait the answer announces, then succeeds.
        admin.post("/_admin/retry_wait", {"ms": 400})
        admin.post("/_admin/faults", fault)
        admin.http.delete("/_admin/requests")
        started = time.monotonic()
        retrying.batches.retrieve("batch_expired")
        waited = time.monotonic() - started
        statuses = [r["status"] for r in admin.requests()]
        expect(statuses == [429, 200], f"{statuses}")
        expect(waited >= 0.4, f"waited {waited:.3f}s, retry-after-ms was 400")
        admin.post("/_admin/retry_wait", {"ms": 50})

    run.check("openai: 429 with Retry-After and retry-after-ms, honoured by the SDK", rate_limited)

    def quota() -> None:
        admin.post("/_admin/quota", {"exhausted": True})
        try:
            client.batches.retrieve("batch_expired")
        except openai.RateLimitError as e:
            expect(e.code == "insufficient_quota", f"code {e.code}")
            expect(e.type == "insufficient_quota", f"type {e.type}")
            run.valid(OPENAI_ERROR, e.response.json(), "insufficient_quota body")
        else:
            raise AssertionError("no RateLimitError")
        finally:
            admin.post("/_admin/quota", {"exhausted": False})

    run.check("openai: 429 insufficient_quota", quota)

    def server_errors() -> None:
        for status in (500, 503):
            admin.post("/_admin/faults", {"type": "status", "status": status})
            try:
                client.batches.retrieve("batch_expired")
            except openai.InternalServerError as e:
                expect(e.status_code == status, f"{e.status_code}")
                run.valid(OPENAI_ERROR, e.response.json(), f"{status} body")
                if status == 503:
                    retry_headers(e.response.headers)
            else:
                raise AssertionError(f"no InternalServerError for {status}")
        admin.post("/_admin/faults", {"type": "status", "status": 502})
        try:
            client.batches.retrieve("batch_expired")
        except openai.APIStatusError as e:
            expect(e.status_code == 502, f"{e.status_code}")
            expect("502 Bad Gateway" in e.response.text, "an HTML page, like the load balancer's")
        else:
            raise AssertionError("no APIStatusError for 502")

    run.check("openai: 500, 502 (HTML) and 503 (with Retry-After)", server_errors)

    def truncated() -> None:
        admin.post(
            "/_admin/faults", {"type": "truncate", "after_bytes": 100, "path_prefix": "/v1/files/"}
        )
        try:
            data = client.files.content("file-out").content
        except (openai.APIConnectionError, httpx.HTTPError):
            pass
        else:
            raise AssertionError(f"a truncated download read as {len(data)} bytes")
        expect(len(client.files.content("file-out").content) > 100, "then whole again")

    run.check("openai: a truncated download is an error for the SDK", truncated)


def pinecone_checks(run: Run, url: str) -> None:
    admin = Admin(url)
    pc = Pinecone(api_key=PINECONE_KEY)
    # The REST index retries 408/429/5xx itself (3 retries, honouring Retry-After): the error
    # paths below fault every try.
    index = pc.index(host=url)
    tries = RetryConfig().max_retries + 1
    raw = httpx.Client(
        base_url=url,
        timeout=10,
        headers={"Api-Key": PINECONE_KEY, "X-Pinecone-Api-Version": FLEET_PINECONE_VERSION},
    )

    def fetch() -> None:
        got = index.fetch(ids=["word-1", "word-2", "word-3", "word-missing"], namespace=NS)
        expect(set(got.vectors) == {"word-1", "word-2", "word-3"}, f"{set(got.vectors)}")
        expect(got.vectors["word-1"].metadata["valid_labels"] == ["MERCHANT_NAME"], "metadata")
        expect(got.vectors["word-2"].values == [0.75, 0.0, -1.0], "values")
        expect(got.namespace == NS, f"namespace {got.namespace!r}")
        info = got.response_info
        expect(info is not None and bool(info.raw_headers.get("x-request-id")), "request id")
        for version in (FLEET_PINECONE_VERSION, "2026-07"):
            r = raw.get(
                "/vectors/fetch",
                params=[("ids", "word-1"), ("ids", "word-3"), ("namespace", NS)],
                headers={"X-Pinecone-Api-Version": version},
            )
            expect(r.status_code == 200, f"{r.status_code}")
            request_id_of(r.headers)
            run.valid(FETCH, r.json(), f"fetch ({version})")

    run.check("pinecone: fetch answers decode strictly into FetchResponse", fetch)

    def update() -> None:
        got = index.update(id="word-3", set_metadata={"valid_labels": ["DATE"]}, namespace=NS)
        expect(got.matched_records is None, f"{got.matched_records}")
        r = raw.post(
            "/vectors/update",
            json={"id": "word-3", "setMetadata": {"text": "2024-01-02"}, "namespace": NS},
        )
        expect(r.status_code == 200, f"{r.status_code}")
        request_id_of(r.headers)
        run.valid(UPDATE, r.json(), "update")
        meta = index.fetch(ids=["word-3"], namespace=NS).vectors["word-3"].metadata
        expect(meta == {"valid_labels": ["DATE"], "text": "2024-01-02"}, f"{meta}")
        r = raw.post("/vectors/update", json={"id": "word-3", "setMetadata": {"x": None}})
        expect(r.status_code == 400, f"null metadata value: {r.status_code}")
        run.valid(PINECONE_ERROR, r.json(), "400 body (null value)")

    run.check("pinecone: update answers decode into UpdateResponse; bad input is a 400", update)

    def unauthorized() -> None:
        admin.post("/_admin/reject_keys", {"seconds": None})
        try:
            index.fetch(ids=["word-1"], namespace=NS)
        except PineconeUnauthorizedError as e:
            expect(e.status_code == 401, f"{e.status_code}")
        else:
            raise AssertionError("no UnauthorizedError")
        finally:
            r = raw.get("/vectors/fetch", params={"ids": "word-1", "namespace": NS})
            admin.delete("/_admin/reject_keys")
        expect(r.status_code == 401, f"{r.status_code}")
        run.valid(PINECONE_ERROR, r.json(), "401 body")
        index.fetch(ids=["word-1"], namespace=NS)

    run.check("pinecone: a rejected key is a 401 UnauthorizedError, then accepted", unauthorized)

    def rate_limited() -> None:
        admin.post("/_admin/fetch_rate_limit", {"per_second": 1})
        try:
            index.fetch(ids=["word-1"], namespace=NS)
            r = raw.get("/vectors/fetch", params={"ids": "word-1", "namespace": NS})
            expect(r.status_code == 429, f"{r.status_code}")
            expect(r.headers.get("retry-after") == "1", "Retry-After")
            run.valid(PINECONE_ERROR, r.json(), "429 body")
            expect(r.json()["message"].startswith("TOO_MANY_REQUESTS"), r.json()["message"])
            # The SDK waits as Retry-After says, and the next try is answered.
            admin.http.delete("/_admin/requests")
            index.fetch(ids=["word-1"], namespace=NS)
            statuses = [q["status"] for q in admin.requests()]
            expect(statuses[0] == 429 and statuses[-1] == 200, f"{statuses}")
        finally:
            admin.post("/_admin/fetch_rate_limit", {"per_second": 100})
        fault = {"type": "status", "status": 429, "retry_after": 0, "times": tries}
        admin.post("/_admin/faults", fault)
        try:
            index.fetch(ids=["word-1"], namespace=NS)
        except PineconeRateLimitError as e:
            expect(e.status_code == 429, f"{e.status_code}")
            headers = {k.lower(): v for k, v in (e.headers or {}).items()}
            expect(headers.get("retry-after", "").isdigit(), f"Retry-After in {headers}")
        else:
            raise AssertionError("no RateLimitError")
        finally:
            admin.delete("/_admin/faults")

    run.check("pinecone: fetches over the rate limit are a 429 with Retry-After", rate_limited)

    def server_errors() -> None:
        admin.post("/_admin/faults", {"type": "status", "status": 503, "times": tries})
        try:
            index.fetch(ids=["word-1"], namespace=NS)
        except PineconeServiceError as e:
            expect(e.status_code == 503, f"{e.status_code}")
        else:
            raise AssertionError("no ServiceError")
        finally:
            admin.delete("/_admin/faults")
        admin.post("/_admin/faults", {"type": "status", "status": 500})
        r = raw.post("/vectors/update", json={"id": "word-1", "setMetadata": {"a": "b"}})
        expect(r.status_code == 500, f"{r.status_code}")
        run.valid(PINECONE_ERROR, r.json(), "500 body")

    run.check("pinecone: 5xx is a ServiceError", server_errors)

    def gateway() -> None:
        r = raw.get(
            "/vectors/fetch",
            params={"ids": "word-1", "namespace": NS},
            headers={"X-Pinecone-Api-Version": "1999-01"},
        )
        expect(r.status_code == 400, f"unknown version: {r.status_code}")
        run.valid(PINECONE_ERROR, r.json(), "400 body (API version)")
        bare = httpx.get(
            f"{url}/vectors/fetch",
            params={"ids": "word-1"},
            headers={"Api-Key": PINECONE_KEY},
        )
        expect(bare.status_code == 400, f"missing version: {bare.status_code}")
        ids = [f"IMAGE#{i:036d}#RECEIPT#00001#LINE#00001#WORD#00001" for i in range(100)]
        try:
            index.fetch(ids=ids, namespace=NS)
        except PineconeApiError as e:
            expect(e.status_code == 414, f"{e.status_code}")
        else:
            raise AssertionError("a fetch URL over 8 KB was answered")

    run.check("pinecone: the gateway's 400 (API version) and 414 (URL over 8 KB)", gateway)


def self_check(run: Run) -> None:
    """Breaks a copy of every answer seen, one field at a time, and expects a rejection."""
    for sample in run.samples:

        def one(sample: Sample = sample) -> str:
            sample.validator.validate(sample.data)
            mutations = list(sample.validator.mutations(sample.data))
            expect(len(mutations) > 0, "nothing to break")
            accepted = []
            for m in mutations:
                try:
                    sample.validator.validate(m.apply(sample.data))
                except Rejected:
                    continue
                accepted.append(m.description)
            expect(not accepted, f"accepted broken copies: {', '.join(accepted)}")
            return f"{len(mutations)} broken copies rejected"

        run.check(f"self-check: {sample.validator.name} of {sample.where}", one)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openai-url", required=True, help="the OpenAI emulator, without /v1")
    parser.add_argument("--pinecone-url", required=True, help="the Pinecone emulator")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="also break a copy of every answer and expect the validators to reject it",
    )
    args = parser.parse_args()
    print(f"openai {openai.__version__}, pinecone SDK, pydantic {pydantic.VERSION}")
    run = Run()
    openai_checks(run, args.openai_url.rstrip("/"))
    pinecone_checks(run, args.pinecone_url.rstrip("/"))
    if args.self_check:
        self_check(run)
    print(f"{run.passed} passed, {run.failed} failed")
    return 0 if run.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
