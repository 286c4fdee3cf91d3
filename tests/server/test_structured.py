"""Structured output through a real server: JSON Schemas, regular expressions, grammars and choices, forced by token
masks on a tiny random model with SmolLM2's tokenizer (a random model left alone would almost never write valid
JSON: whatever it writes here is valid because the masks allow nothing else)."""

from __future__ import annotations

import asyncio
import json
import math
import re

import jsonschema
import pytest

from swaa_client import AsyncClient, Client, FinishReason, InvalidArgumentError
from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server, tiny_engine_config

pytest.importorskip("xgrammar")

S = {"type": "string", "maxLength": 6}  # bounded: a random model keeps a string open as long as it may
I = {"type": "integer", "minimum": -50, "maximum": 500}

SCHEMAS = [
    {"type": "object", "properties": {"a": I}, "required": ["a"], "additionalProperties": False},
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "boolean"},
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"enum": ["red", "green", "blue"]},
    {"type": "string", "pattern": "^[a-z]{2,5}$"},
    {"type": "array", "items": I, "minItems": 1, "maxItems": 4},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "tags": {"type": "array", "items": S, "maxItems": 3}},
     "required": ["ok", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": I, "y": I}, "required": ["x", "y"],
                                                "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
    {"type": "null"},
    {"const": "fixed"},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
    {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 1, "maximum": 3}},
     "required": ["kind", "n"], "additionalProperties": False},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "maxItems": 3},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9]{4}$"}, "v": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}},
     "required": ["id", "v"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"q": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["q"], "additionalProperties": False}}},
     "required": ["items"], "additionalProperties": False},
    {"type": "string", "enum": ["yes", "no"]},
    {"type": "object", "properties": {"a": {"const": 1}, "b": {"type": "string", "maxLength": 3}}, "required": ["a", "b"],
     "additionalProperties": False},
    {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}, "maxItems": 2},
]
MAX_TOKENS = 120  # ample for every schema above; the grammar's end (EOS) ends each first


@pytest.fixture(scope="module")
def chat_server(tiny_chat_folder):
    engine = LLMEngine(tiny_engine_config(tiny_chat_folder))
    with running_server(engine, ServerConfig(port=0, grace_s=2, metrics_port=0)) as s:
        yield s


async def _many(target: str, calls: list[dict], at_once: int = 48) -> list:
    """``calls`` with at most ``at_once`` in flight (the test server queues at most 64)."""
    gate = asyncio.Semaphore(at_once)
    async with AsyncClient(target, timeout=300) as c:
        async def one(kw):
            async with gate:
                return await c.generate(**kw)
        return await asyncio.gather(*(one(kw) for kw in calls))


def test_json_schemas_always_parse_and_validate(chat_server):
    # 200 requests (48 at a time) over 20 schemas: greedy, seeded sampling, some with logprobs, varied prompts
    calls = []
    for i, schema in enumerate(SCHEMAS):
        for variant in range(10):
            kw = dict(prompt=f"Answer {i}.{variant} as JSON:", json_schema=schema, max_tokens=MAX_TOKENS)
            if variant:
                kw.update(temperature=0.5 + variant / 10, seed=1000 * i + variant)
            if variant % 3 == 2:
                kw.update(logprobs=2)
            calls.append(kw)
    done = asyncio.run(_many(chat_server.target, calls))
    for kw, c in zip(calls, done):
        assert c.finish_reason == FinishReason.EOS, (kw, c.text)
        value = json.loads(c.text)
        jsonschema.validate(value, kw["json_schema"])
        if "logprobs" in kw:
            assert len(c.logprobs) == len(c.token_ids) and all(math.isfinite(l.logprob) for l in c.logprobs)
    assert chat_server.wait_idle()


def test_seeded_structured_output_is_reproducible_and_streams_like_unary(chat_server):
    schema = SCHEMAS[1]
    with Client(chat_server.target, timeout=120) as c:
        a = c.generate("Who?", json_schema=schema, temperature=1.0, seed=7, max_tokens=MAX_TOKENS)
        b = c.generate("Who?", json_schema=json.dumps(schema), temperature=1.0, seed=7, max_tokens=MAX_TOKENS)
        chunks = list(c.stream("Who?", json_schema=schema, temperature=1.0, seed=7, max_tokens=MAX_TOKENS))
    assert a.text == b.text and a.token_ids == b.token_ids
    assert "".join(ch.text for ch in chunks) == a.text
    assert chunks[-1].finish_reason == FinishReason.EOS
    jsonschema.validate(json.loads(a.text), schema)


@pytest.mark.parametrize("pattern", [r"\d{3}-[a-z]{2,5}", r"(red|green|blue)!", r"[A-Z][a-z]{1,4}( [A-Z][a-z]{1,4}){0,2}",
                                     r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])"])
def test_regex_output_matches(chat_server, pattern):
    with Client(chat_server.target, timeout=120) as c:
        for seed in (None, 3):
            kw = dict(regex=pattern, max_tokens=60)
            if seed is not None:
                kw.update(temperature=1.0, seed=seed)
            out = c.generate("Say it:", **kw)
            assert out.finish_reason == FinishReason.EOS, out.text
            assert re.fullmatch(pattern, out.text), out.text
            streamed = "".join(ch.text for ch in c.stream("Say it:", **kw))
            assert streamed == out.text


def test_choices_and_grammar(chat_server):
    choices = ["yes", "no", 'maybe "so"', "ünïcode ✓"]
    grammar = 'root ::= num (("+" | "*") num)*\nnum ::= [1-9] [0-9]?'
    with Client(chat_server.target, timeout=120) as c:
        for seed in range(4):
            out = c.generate("Pick:", choices=choices, temperature=1.0, seed=seed, max_tokens=40)
            assert out.text in choices and out.finish_reason == FinishReason.EOS
        out = c.generate("Sum:", grammar=grammar, max_tokens=80)
    # a random model may keep extending the expression: whatever it wrote is a prefix the grammar allows
    assert re.fullmatch(r"[1-9][0-9]?([+*][1-9][0-9]?)*", out.text) or (
        out.finish_reason == FinishReason.LENGTH and re.fullmatch(r"[1-9][0-9]?([+*][1-9][0-9]?)*[+*]?", out.text)), out.text


def test_stop_strings_cut_structured_output(chat_server):
    with Client(chat_server.target, timeout=120) as c:
        out = c.generate("Pick:", choices=["abc;def", "xyz;uvw"], stop=[";"], max_tokens=40)
        seeded = c.generate("Pick:", choices=["abc;def", "xyz;uvw"], stop=[";"], max_tokens=40, temperature=1.0, seed=5)
    for o in (out, seeded):
        assert o.finish_reason == FinishReason.STOP and o.stop == ";"
        assert o.text in ("abc", "xyz")


@pytest.mark.parametrize("kw,field", [
    (dict(json_schema='{"type": "nonsense"}'), "sampling.structured_output.json_schema"),
    (dict(json_schema="not json"), "sampling.structured_output.json_schema"),
    (dict(json_schema={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}), "sampling.structured_output.json_schema"),
    (dict(regex="a(b"), "sampling.structured_output.regex"),
    (dict(grammar="root ::= undefined_rule"), "sampling.structured_output.grammar"),
    (dict(choices=[""]), "sampling.structured_output.choices"),
])
def test_refused_specs_are_invalid_argument_naming_the_field(chat_server, kw, field):
    with Client(chat_server.target, timeout=30) as c:
        with pytest.raises(InvalidArgumentError) as e:
            c.generate("x", max_tokens=4, **kw)
        with pytest.raises(InvalidArgumentError):
            list(c.stream("x", max_tokens=4, **kw))
    assert [v.field for v in e.value.field_violations] == [field]


def test_client_refuses_two_specs():
    with pytest.raises(InvalidArgumentError) as e:
        from swaa_client._convert import generate_request

        generate_request("x", regex="a", choices=["a"])
    assert e.value.field_violations[0].field == "sampling.structured_output"


def test_model_without_tokenizer_refuses_structured_output():
    from swaa_engine.errors import InvalidRequestError
    from swaa_engine.sampling_params import StructuredOutput
    from swaa_engine.structured import Grammars

    with pytest.raises(InvalidRequestError) as e:
        Grammars(None, 384, {0}).matcher(StructuredOutput("regex", "[a-z]+"))
    assert e.value.field == "structured_output"


def test_cli_json_schema_choices_and_samples(chat_server, tmp_path, capsys):
    from swaa_server import cli

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMAS[1]))
    assert cli.main(["generate", "Who?", "--target", chat_server.target, "--json-schema", str(schema),
                     "--max-tokens", str(MAX_TOKENS)]) == 0
    text = _answer(capsys.readouterr().out)
    jsonschema.validate(json.loads(text), SCHEMAS[1])
    assert cli.main(["generate", "Pick one", "--target", chat_server.target, "--choice", "yes", "--choice", "no",
                     "-n", "3", "--temperature", "1", "--seed", "4", "--max-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert len(_answer(out.out).split()) == 3 and set(_answer(out.out).split()) <= {"yes", "no"}
    assert out.err.count("[sample ") == 3 and "3 samples" in out.err


def test_cli_offline_samples(tiny_chat_folder, capsys):
    """``swaa generate --offline -n``: the samples share one engine's prompt, printed as the remote path prints them."""
    from swaa_server import cli

    assert cli.main(["generate", "Pick one", "--offline", "--model", tiny_chat_folder, "--device", "cpu",
                     "--choice", "yes", "--choice", "no", "-n", "3", "--temperature", "1", "--seed", "4",
                     "--max-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert set(_answer(out.out).split()) <= {"yes", "no"} and len(_answer(out.out).split()) == 3
    assert out.err.count("[sample ") == 3 and "3 samples" in out.err


def _answer(stdout: str) -> str:
    """The CLI's answer without the in-process server's log lines (they share stdout here)."""
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[[^\n]*\n?", "", stdout).strip()


def test_samples_each_follow_the_schema(chat_server):
    with Client(chat_server.target, timeout=120) as c:
        out = c.generate("Who?", json_schema=SCHEMAS[1], n=4, temperature=1.0, seed=9, max_tokens=MAX_TOKENS)
    assert len(out.samples) == 4 and len({s.text for s in out.samples}) > 1
    for s in out.samples:
        assert s.finish_reason == FinishReason.EOS
        jsonschema.validate(json.loads(s.text), SCHEMAS[1])
