"""What a newcomer meets: metrics beside gRPC on loopback, `swaa load` says why it stopped, every flag's help shows
its default, the SDK names an out-of-range field before sending anything."""

import argparse
import asyncio
import contextlib

import pytest

from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server, tiny_engine_config


@pytest.fixture(scope="module")
def local(tiny_qwen3):
    engine = LLMEngine(tiny_engine_config(tiny_qwen3[0]))
    # the default config but for free ports: nothing says where metrics bind
    with running_server(engine, ServerConfig(port=0, metrics_port=0)) as s:
        yield s


def test_metrics_bind_where_grpc_binds(local):
    assert ServerConfig().metrics_host is None  # "the gRPC host", not 0.0.0.0
    assert local.metrics_host == "127.0.0.1"


@pytest.mark.parametrize("requests,duration,ended_by", [(12, None, "requests"), (100000, 1.0, "duration")])
def test_load_ends_on_whichever_comes_first_and_says_which(local, requests, duration, ended_by):
    from swaa_server.loadgen import LoadConfig, run_load

    assert LoadConfig().duration_s is None  # no silent 60 s limit
    cfg = LoadConfig(target=local.target, concurrency=4, requests=requests, duration_s=duration, prompt_tokens=(4, 20),
                     max_tokens=(2, 4), cancel_fraction=0.0)
    report = asyncio.run(run_load(cfg, progress=False))
    assert report.ended_by == ended_by
    if ended_by == "requests":
        assert sum(report.statuses.values()) == requests and f"all {requests} requests done" in report.lines()[0]
    else:
        assert 0 < sum(report.statuses.values()) < requests and "duration limit (1 s) ended it" in report.lines()[0]


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_flag_has_help_and_every_help_shows_defaults():
    from swaa_server.cli import build_parser

    for p in _parsers(build_parser({})):
        assert issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter), p.prog
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{p.prog} {action.option_strings[0]} has no help"
    serve_help = " ".join(next(p for p in _parsers(build_parser({})) if p.prog.endswith("serve")).format_help().split())
    assert "(default: 50051)" in serve_help and "(default: 5.0)" in serve_help  # --port, --drain-delay


def test_cli_defaults_come_from_the_dataclasses():
    from swaa_engine.config import CacheConfig, SchedulerConfig
    from swaa_engine.sampling_params import SamplingParams
    from swaa_server.cli import build_parser

    gen = build_parser({}).parse_args(["generate", "hi"])
    assert (gen.max_tokens, gen.temperature, gen.top_p, gen.top_k) == (SamplingParams.max_tokens, SamplingParams.temperature,
                                                                       SamplingParams.top_p, SamplingParams.top_k)
    serve = build_parser({}).parse_args(["serve"])
    assert (serve.max_num_seqs, serve.block_size, serve.cache_cpu_cap, serve.grace, serve.drain_delay) == (
        SchedulerConfig.max_num_seqs, CacheConfig.block_size, CacheConfig.cpu_cap_bytes, ServerConfig.grace_s,
        ServerConfig.drain_delay_s)


def test_finetune_defaults_restated_in_the_cli_equal_the_dataclass():
    """The finetune flags take their defaults from TrainConfig (torch-free: swaa_train.config)."""
    from swaa_train.finetune import TrainConfig
    from swaa_server.cli import build_parser

    a = build_parser({}).parse_args(["finetune", "--data", "d", "--out", "o"])
    for flag, name in [("rank", "rank"), ("alpha", "alpha"), ("lr", "lr"), ("epochs", "epochs"), ("max_steps", "max_steps"),
                       ("max_batch_tokens", "max_batch_tokens"), ("kernel", "kernel"), ("seed", "seed"),
                       ("save_every", "save_every"), ("limit", "limit")]:
        assert getattr(a, flag) == TrainConfig.__dataclass_fields__[name].default, flag


@pytest.mark.parametrize("kwargs, field", [
    (dict(top_k=-1), "sampling.top_k"),  # was a bare protobuf ValueError naming nothing
    (dict(top_p=0.0), "sampling.top_p"),
    (dict(temperature=float("nan")), "sampling.temperature"),
    (dict(max_tokens=0), "sampling.max_tokens"),
    (dict(seed=-5), "sampling.seed"),
    (dict(logprobs=21), "sampling.logprobs"),
    (dict(stop_token_ids=[-1]), "sampling.stop_token_ids"),
    (dict(prompt=[{"role": "wizard", "content": "hi"}]), "chat.messages[0].role"),
])
def test_sdk_refuses_out_of_range_fields_before_sending(kwargs, field):
    from swaa_client import Client, InvalidArgumentError

    kwargs = {"prompt": [1, 2, 3], **kwargs}
    with Client("127.0.0.1:9", timeout=2) as c:  # nothing listens there: the check must not need a server
        with pytest.raises(InvalidArgumentError) as e:
            c.generate(**kwargs)
        with pytest.raises(InvalidArgumentError):
            next(iter(c.stream(**kwargs)))
    assert [v.field for v in e.value.field_violations] == [field]
    assert field in str(e.value)
