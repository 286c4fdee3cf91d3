"""The `swaa` command line: one program, subcommands registered in COMMANDS."""

from __future__ import annotations

import argparse
import sys


def add_swaa_args(p: argparse.ArgumentParser) -> None:
    from swaa_engine.swaa import SWAAConfig

    g = p.add_argument_group("SWAA (omit --window for the embedded model's default; --full-attention for none)")
    g.add_argument("--window", type=int, help="sliding window W: a query sees itself and W-1 earlier tokens (a model with "
                                              "sliding layers of its own keeps their window: W slides its full layers)")
    g.add_argument("--sinks", type=int, default=None, help="first k tokens stay visible to every sliding-layer query")
    g.add_argument("--fa-decode", nargs="?", const="all", default=None, metavar="LAYERS",
                   help="generated tokens attend to everything (all sliding layers, or a layer list/pattern)")
    g.add_argument("--fa-layers", default=None, metavar="LAYERS", help="full-attention layers: 1,3,5 | odd | even | every:N[:offset]")
    g.add_argument("--fa-tail", type=int, default=default(SWAAConfig, "fa_tail"), metavar="T",
                   help="experimental: the last T prompt tokens attend to everything in fa_decode layers (needs --fa-decode)")
    g.add_argument("--full-attention", action="store_true",
                   help="no SWAA (a model's own sliding layers, if any, keep their window)")


def swaa_from_args(args, model_given: bool):
    from swaa_engine.defaults import EMBEDDED_SWAA
    from swaa_engine.swaa import SWAAConfig

    if args.full_attention:
        return SWAAConfig()
    if args.window is None:
        if args.sinks is not None or args.fa_decode is not None or args.fa_layers is not None:
            # without a window these apply to the model's own sliding layers (refused at load if it has none)
            fa_decode = {None: False, "all": True}.get(args.fa_decode, args.fa_decode)
            return SWAAConfig(sinks=args.sinks or 0, fa_decode=fa_decode, fa_layers=args.fa_layers or (), fa_tail=args.fa_tail)
        return SWAAConfig() if model_given else EMBEDDED_SWAA
    fa_decode = {None: False, "all": True}.get(args.fa_decode, args.fa_decode)
    return SWAAConfig(window=args.window, sinks=args.sinks or 0, fa_decode=fa_decode, fa_layers=args.fa_layers or (),
                      fa_tail=args.fa_tail)


def default(cls, name: str):
    """A dataclass field's default: the CLI restates none (one source for each default)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if callable(f.default_factory) else f.default


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1 << 20,
          "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1 << 30}


def byte_size(text: str) -> int:
    """'1073741824', '1GiB', '512MiB', '2GB' -> bytes (argparse type)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 1073741824, 512MiB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


byte_size.__name__ = "size"  # argparse names the type in its error message


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, except where there is none to show (None, off switches) or the help says it."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig

    e = p.add_argument_group("engine")
    e.add_argument("--model", default=None, help="Hugging Face folder or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    e.add_argument("--dtype", default=default(EngineConfig, "dtype"), choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and KV cache (auto: bfloat16 on CUDA, float32 on CPU)")
    e.add_argument("--device", default=default(EngineConfig, "device"), help="cpu, cuda, cuda:1, … (auto: CUDA if present)")
    e.add_argument("--attention-backend", default=default(EngineConfig, "attention_backend"),
                   help="flash (flash-attn-4, CUDA) or torch (auto: flash where it runs)")
    e.add_argument("--max-model-len", type=int, default=None, help="longest prompt + generation (default: the model's limit)")
    e.add_argument("--max-num-seqs", type=int, default=default(SchedulerConfig, "max_num_seqs"), help="sequences running at once")
    e.add_argument("--max-num-batched-tokens", type=int, default=default(SchedulerConfig, "max_num_batched_tokens"),
                   help="tokens per engine step; also the prefill chunk size")
    e.add_argument("--block-size", type=int, default=default(CacheConfig, "block_size"), help="tokens per paged KV block")
    e.add_argument("--cache-bytes", type=byte_size, default=None, metavar="SIZE",
                   help="KV cache budget, e.g. 1GiB (wins over the sizing below; default: what --max-num-seqs sequences "
                        "of --max-model-len can use, within --cache-fraction and, on CPU, --cache-cpu-cap)")
    e.add_argument("--cache-fraction", type=float, default=default(CacheConfig, "budget_fraction"),
                   help="most of the free device memory (available RAM on CPU) the KV cache may take")
    e.add_argument("--cache-cpu-cap", type=byte_size, default=default(CacheConfig, "cpu_cap_bytes"), metavar="SIZE",
                   help="most the KV cache takes on CPU unless --cache-bytes says otherwise")
    e.add_argument("--swap-bytes", type=byte_size, default=default(CacheConfig, "swap_bytes"), metavar="SIZE",
                   help="host memory for preempted sequences' KV (default: like the KV budget, at most half the free "
                        "RAM; 0: preemption recomputes)")
    e.add_argument("--no-prefix-cache", action="store_true",
                   help="compute every prompt in full (default: reuse the KV of prefixes seen before; exact)")
    e.add_argument("--decode-reserve-tokens", type=int, default=default(SchedulerConfig, "decode_reserve_tokens"),
                   help="admission keeps cache free for this many more generated tokens of each running sequence")
    e.add_argument("--lora", default=None, metavar="DIR", help="peft adapter folder (swaa finetune) merged into the weights at load")
    e.add_argument("--no-cuda-graphs", action="store_true", help="run decode steps eagerly on CUDA (default: replay CUDA graphs)")
    add_swaa_args(p)


def engine_config_from_args(args):
    from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig

    return EngineConfig(
        model=args.model,
        swaa=swaa_from_args(args, model_given=args.model is not None),
        dtype=args.dtype,
        device=args.device,
        attention_backend=args.attention_backend,
        max_model_len=args.max_model_len,
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                  decode_reserve_tokens=args.decode_reserve_tokens),
        cache=CacheConfig(block_size=args.block_size, budget_bytes=args.cache_bytes, budget_fraction=args.cache_fraction,
                          cpu_cap_bytes=args.cache_cpu_cap, swap_bytes=args.swap_bytes,
                          prefix_caching=not args.no_prefix_cache),
        lora=args.lora,
        cuda_graphs=not args.no_cuda_graphs,
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    from swaa_engine.sampling_params import SamplingParams

    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=default(SamplingParams, "max_tokens"),
                   help="most tokens to generate; prompt + max_tokens must fit the server's max context")
    g.add_argument("--temperature", type=float, default=default(SamplingParams, "temperature"), help="0: greedy")
    g.add_argument("--top-p", type=float, default=default(SamplingParams, "top_p"), help="nucleus sampling (1: off)")
    g.add_argument("--top-k", type=int, default=default(SamplingParams, "top_k"), help="sample among the k likeliest (0: off)")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling (default: a random one)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--json-schema", metavar="FILE", default=None, help="the output is JSON valid against this JSON Schema file")
    s.add_argument("--regex", default=None, help="the output matches this regular expression")
    s.add_argument("--grammar", metavar="FILE", default=None, help="the output follows this EBNF grammar file (start rule `root`)")
    s.add_argument("--choice", action="append", default=None, help="the output is one of these strings (repeatable)")
    g.add_argument("-n", type=int, default=default(SamplingParams, "n"), help="samples of the prompt (1-16; the prompt is computed once)")
    g.add_argument("--presence-penalty", type=float, default=default(SamplingParams, "presence_penalty"),
                   help="subtracted once from each token already generated ([-2, 2])")
    g.add_argument("--frequency-penalty", type=float, default=default(SamplingParams, "frequency_penalty"),
                   help="subtracted per time a token was generated ([-2, 2])")
    g.add_argument("--logit-bias", action="append", default=[], metavar="ID=BIAS", type=_bias,
                   help="add BIAS ([-100, 100]) to token ID's logit (repeatable)")
    g.add_argument("--min-tokens", type=int, default=default(SamplingParams, "min_tokens"),
                   help="no EOS or stop token id before this many tokens")
    g.add_argument("--bad-word", action="append", default=[], help="a word never generated (repeatable)")
    g.add_argument("--ban-token-id", action="append", default=[], type=int, help="a token id never generated (repeatable)")
    g.add_argument("--priority", type=int, default=default(SamplingParams, "priority"),
                   help="higher is admitted first (equal: first come first served)")


def structured_args(args) -> dict:
    """The structured-output flags as the SDK's keywords (files read here)."""
    out = {}
    if args.json_schema:
        with open(args.json_schema) as f:
            out["json_schema"] = f.read()
    if args.grammar:
        with open(args.grammar) as f:
            out["grammar"] = f.read()
    if args.regex is not None:
        out["regex"] = args.regex
    if args.choice:
        out["choices"] = tuple(args.choice)
    return out


def _bias(text: str) -> tuple[int, float]:
    tok, sep, bias = text.partition("=")
    try:
        return int(tok), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS, e.g. 42=-5.5, got {text!r}") from None


def _controls(args) -> dict:
    """The sampling controls of ``swaa generate`` as keywords, the same for SamplingParams and the SDK."""
    return dict(presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                logit_bias=dict(args.logit_bias), min_tokens=args.min_tokens, bad_words=tuple(args.bad_word),
                banned_token_ids=tuple(args.ban_token_id), priority=args.priority)


def cmd_generate(args) -> int:
    return _generate_offline(args) if args.offline else _generate_remote(args)


def _generate_offline(args) -> int:
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams, StructuredOutput

    structured = [StructuredOutput(k, v) for k, v in structured_args(args).items()]
    config = engine_config_from_args(args)
    print(f"loading {config.model or 'embedded SmolLM2-135M-Instruct'} ({config.swaa.describe()}) …", file=sys.stderr)
    engine = LLMEngine(config)
    print(f"KV cache {_gib(engine.pool_plan.total_bytes)} ({engine.cache_budget_reason})", file=sys.stderr)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop), **_controls(args),
                            structured_output=structured[0] if structured else None)
    if args.n == 1:
        engine.add_request(_prompt(args), params)
        while engine.has_work():
            for chunk in engine.step():
                _write(chunk.text)
                if chunk.finished:
                    _summary(chunk.finish_reason.value, chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                             chunk.timings.ttft_s or 0.0, chunk.timings.total_s)
        return 0
    # several samples: printed as the remote path prints them, one whole answer after another
    from swaa_engine.engine import sample_id

    ids = [sample_id("cli", i) for i in range(args.n)]
    engine.add_samples(_prompt(args), params, ids)
    texts, finals = {sid: [] for sid in ids}, {}
    while engine.has_work():
        for chunk in engine.step():
            texts[chunk.request_id].append(chunk.text)
            if chunk.finished:
                finals[chunk.request_id] = chunk
    for i, sid in enumerate(ids):
        print(f"[sample {i}: {finals[sid].finish_reason.value}]", file=sys.stderr)
        text = "".join(texts[sid])
        _write(text + ("" if text.endswith("\n") else "\n"))
    last = max(finals.values(), key=lambda c: c.timings.total_s)
    _summary(f"{args.n} samples", finals[ids[0]].usage.prompt_tokens,
             sum(c.usage.completion_tokens for c in finals.values()),
             min(c.timings.ttft_s or 0.0 for c in finals.values()), last.timings.total_s)
    return 0


_last_char = [""]


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
        _last_char[0] = text[-1]


def _prompt(args):
    return [{"role": "user", "content": args.prompt}] if args.chat else args.prompt


def _summary(reason: str, prompt_tokens: int, completion_tokens: int, ttft: float, total: float) -> None:
    if _last_char[0] not in ("", "\n"):  # the answer ends its own line, on stdout, before the stats line
        sys.stdout.write("\n")
        sys.stdout.flush()
    print(f"[{reason}; {prompt_tokens} prompt + {completion_tokens} generated tokens; "
          f"first token {ttft:.2f}s, total {total:.2f}s]", file=sys.stderr)


def add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server connection")
    g.add_argument("--target", default=None, help="host:port of the service (default: $SWAA_TARGET or 127.0.0.1:50051)")
    g.add_argument("--token", default=None, help="bearer token (default: $SWAA_TOKEN)")
    g.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    g.add_argument("--tls-ca", default=None, help="PEM file of the CA that signed the server's certificate")
    g.add_argument("--tls-cert", default=None, help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", default=None, help="client key (PEM) for mutual TLS")
    g.add_argument("--timeout", type=float, default=None, help="deadline in seconds")


def _client(args):
    from swaa_client import Client

    return Client(args.target, token=args.token, tls=args.tls, root_certificates=args.tls_ca,
                  client_certificate=args.tls_cert, client_key=args.tls_key, timeout=args.timeout)


def _generate_remote(args) -> int:
    kw = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
              seed=args.seed, stop=args.stop, **structured_args(args), **_controls(args))
    with _client(args) as client:
        if args.n != 1:  # several samples: the whole answer, one sample after another (a stream interleaves them)
            done = client.generate(_prompt(args), n=args.n, **kw)
            for s in done.samples:
                print(f"[sample {s.index}: {s.finish_reason.value}]", file=sys.stderr)
                _write(s.text + ("" if s.text.endswith("\n") else "\n"))
            _summary(f"{len(done.samples)} samples", done.usage.prompt_tokens, done.usage.completion_tokens,
                     done.timings.ttft_s, done.timings.total_s)
            return 0
        for chunk in client.stream(_prompt(args), **kw):
            _write(chunk.text)
            if chunk.finished:
                _summary(chunk.finish_reason.value, chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                         chunk.timings.ttft_s, chunk.timings.total_s)
    return 0


def cmd_health(args) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_info(args) -> int:
    import dataclasses
    import json

    with _client(args) as client:
        info = client.model_info()
    print(json.dumps(dataclasses.asdict(info), indent=2) if args.json else info_summary(info))
    return 0


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def info_summary(info) -> str:
    """A few lines a person reads: the model, SWAA, the layers by kind, the cache and what sized it."""
    from collections import Counter

    swaa = ("full attention" if info.window is None else
            f"window {info.window}, sinks {info.sinks}, fa_decode {info.fa_decode or 'false'}"
            + (f", fa_layers {info.fa_layers}" if info.fa_layers else "") + (f", fa_tail {info.fa_tail}" if info.fa_tail else ""))
    kinds = Counter((l.attention, l.cache) for l in info.layers)
    layers = ", ".join(f"{n} {a} ({c})" for (a, c), n in kinds.items())
    paged_tokens = info.paged.total * info.block_size
    from swaa_engine.sampling_params import SamplingParams

    longest = info.max_context - SamplingParams.max_tokens
    lines = [f"model      {info.model} ({info.architecture}, vocab {info.vocab_size}), max context {info.max_context} tokens "
             f"(prompt + max_tokens: with the default max_tokens {SamplingParams.max_tokens}, prompts up to {longest})",
             f"SWAA       {swaa}",
             f"layers     {len(info.layers)}: {layers}",
             f"KV cache   {_gib(info.cache_bytes)}" + (f" ({info.cache_budget})" if info.cache_budget else ""),
             f"  paged    {info.paged.used}/{info.paged.total} blocks of {info.block_size} tokens in use "
             f"({paged_tokens} tokens in all)",
             f"  ring     {info.ring.used}/{info.ring.total} rings in use"]
    if not info.ring.total and info.window is not None:
        lines.append("  note     no layer keeps a ring: every layer holds its full KV (fa_decode or full attention), so SWAA "
                     "saves prefill compute here, not cache memory; ring layers (e.g. --fa-layers odd without "
                     "--fa-decode) halve it at a cost in retrieval beyond the window (docs/quality.md)")
    if info.replicas:
        lines.append(f"replicas   {info.replicas_ready}/{len(info.replicas)} ready")
        lines += [f"  #{r.index}       {'ready' if r.ready else 'down'}, {r.running} running, {r.waiting} waiting, "
                  f"{r.restarts} restarts" for r in info.replicas]
    return "\n".join(lines)


def _read_tokens(args) -> tuple[str, ...]:
    """Tokens from --auth-token-file (one per line, # comments) and the env var --auth-token-env names (comma-separated)."""
    import os

    tokens = []
    if args.auth_token_file:
        with open(args.auth_token_file) as f:
            tokens += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not tokens:
            raise ValueError(f"--auth-token-file: {args.auth_token_file} holds no token")
    tokens += [t.strip() for t in os.environ.get(args.auth_token_env, "").split(",") if t.strip()]
    return tuple(dict.fromkeys(tokens))


def server_config_from_args(args):
    from swaa_server.config import ServerConfig, TLSConfig

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key: give both to serve TLS")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca: mutual TLS needs --tls-cert and --tls-key too")
    tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    return ServerConfig(host=args.host, port=args.port, grace_s=args.grace, drain_delay_s=args.drain_delay,
                        max_message_bytes=args.max_message_bytes,
                        keepalive_s=args.keepalive, max_connection_age_s=args.max_connection_age or None, metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                        metrics_host=args.metrics_host, auth_tokens=_read_tokens(args), tls=tls, log_prompts=args.log_prompts)


def cmd_serve(args) -> int:
    import asyncio

    from swaa_server.app import serve
    from swaa_server.telemetry import configure_logging

    configure_logging(args.log_format, args.log_level)
    server_config = server_config_from_args(args)
    config = engine_config_from_args(args)
    # non-zero when the engine died (app.EXIT_ENGINE_DEAD): the orchestrator restarts the process
    return asyncio.run(serve(config, server_config, replicas=replica_config_from_args(args)))


def replica_config_from_args(args):
    if not args.replicas:
        return None
    from swaa_server.replicas import ReplicaConfig

    return ReplicaConfig(replicas=args.replicas, ray_address=args.ray_address, gpus_per_replica=args.gpus_per_replica,
                         cpus_per_replica=args.cpus_per_replica, ray_num_cpus=args.ray_num_cpus,
                         object_store_bytes=args.ray_object_store_bytes)


def _eval_model(model: str | None, weights: bool = True):
    """(name, transformers model in float32 or None, tokenizer) for ``swaa eval``; a GGUF file is read once
    (``models.gguf.read_gguf``: config, tokenizer and weights), not once per object as ``from_pretrained`` reads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swaa_engine.models.loader import resolve_source

    src = resolve_source(model)
    print(f"loading {src.name} …", file=sys.stderr)
    if src.gguf_file:
        from swaa_engine.models.gguf import read_gguf

        ck = read_gguf(src.folder, src.gguf_file)
        if not weights:
            return src.name, ck.config, ck.tokenizer
        hf = AutoModelForCausalLM.from_config(ck.config, dtype=torch.float32)  # (on CPU: buffers are real)
        names = set(hf.state_dict())
        missing = names - set(ck.state_dict) - ({"lm_head.weight"} if ck.config.tie_word_embeddings else set())
        if missing:
            raise RuntimeError(f"{src.gguf_file}: weights missing: {sorted(missing)[:5]}")
        hf.load_state_dict({k: ck.state_dict[k] for k in names if k in ck.state_dict}, strict=False)
        hf.tie_weights()
        return src.name, hf.eval(), ck.tokenizer
    tok = AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())
    if not weights:
        from swaa_engine.models.loader import load_hf_config

        return src.name, load_hf_config(src), tok
    return src.name, AutoModelForCausalLM.from_pretrained(src.folder, dtype=torch.float32, **src.hf_kwargs()).eval(), tok


def cmd_eval(args) -> int:
    """Long-context quality grid through the engine (resumable: rerun the same command to continue)."""
    import time

    from swaa_eval.harness import EvalConfig, build_samples, run_grid, write_report
    from swaa_engine.models.registry import native_windows

    name, hf, tok = _eval_model(args.model, weights=not args.write_prompts)
    cfg = EvalConfig(out=args.out, window=args.window, sinks=args.sinks, tail=args.tail,
                     lengths=tuple(int(x) for x in args.lengths.split(",")), samples=args.samples,
                     tasks=tuple(args.tasks.split(",")), configs=tuple(args.configs.split(",")) if args.configs else (),
                     seed=args.seed, dtype=args.dtype, max_num_batched_tokens=args.max_batched_tokens,
                     native=native_windows(getattr(hf, "config", hf)), prompts=args.prompts)
    if args.write_prompts:  # the samples only (token ids): a GPU host then needs neither the texts nor tokenizing
        from swaa_eval import tasks as T

        t0 = time.perf_counter()
        samples = build_samples(cfg, tok)
        T.save_samples(args.write_prompts, samples, {"model": name, "seed": cfg.seed, "lengths": list(cfg.lengths),
                                                     "samples": cfg.samples, "tasks": list(cfg.tasks)})
        print(f"wrote {len(samples)} samples to {args.write_prompts} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 0
    if args.lora:
        from swaa_engine.models.adapters import merge_adapter

        hf = merge_adapter(hf, args.lora).eval()
        name += f" + LoRA {args.lora}"
    t0 = time.perf_counter()
    run_grid(cfg, hf, tok)
    title = (f"Model {name}; window {cfg.window}, sinks {cfg.sinks}, question tail {cfg.tail}; {cfg.samples} samples "
             f"per cell; seed {cfg.seed}; {cfg.dtype}; this invocation ran {time.perf_counter() - t0:.0f} s.")
    print(write_report(cfg, title=title))
    print(f"wrote {cfg.out}/table.md, table.json, plot.png, results.jsonl", file=sys.stderr)
    return 0


def cmd_load(args) -> int:
    import asyncio
    import json

    from swaa_server.loadgen import LoadConfig, run_load

    def span(s):
        lo, _, hi = s.partition(":")
        return int(lo), int(hi or lo)

    cfg = LoadConfig(target=args.target, concurrency=args.concurrency, requests=args.requests, duration_s=args.duration,
                     prompt_tokens=span(args.prompt_tokens), max_tokens=span(args.max_tokens),
                     cancel_fraction=args.cancel_fraction, seed=args.seed, token=args.token)
    report = asyncio.run(run_load(cfg, progress=sys.stderr.isatty()))
    print("\n".join(report.lines()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.__dict__, f, indent=1)
    return 0 if set(report.statuses) <= {"OK", "RESOURCE_EXHAUSTED"} else 1


def _load_hf(model: str | None, device: str = "auto"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swaa_engine.engine import resolve_device
    from swaa_engine.models.loader import resolve_source

    src = resolve_source(model)
    print(f"loading {src.name} …", file=sys.stderr)
    hf = AutoModelForCausalLM.from_pretrained(src.folder, dtype=torch.float32, **src.hf_kwargs())
    return src, hf.to(resolve_device(device)), AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())


def cmd_distill(args) -> int:
    """Self-distilled training data: full-attention answers to training prompts, kept when correct (resumable)."""
    from swaa_train.distill import DistillConfig, distill

    cfg = DistillConfig(out=args.out, lengths=tuple(int(x) for x in args.lengths.split(",")), samples=args.samples,
                        tasks=tuple(t for t in args.tasks.split(",") if t), seed=args.seed, dtype=args.dtype,
                        lm_samples=args.lm_samples, lm_top_k=args.lm_top_k)
    _, hf, tok = _load_hf(args.model)
    counts = distill(cfg, hf.eval(), tok)
    print(f"{cfg.out}: kept {counts['kept']} of {counts['attempted']} retrieval prompts; {counts['lm']} LM rows")
    return 0


def cmd_finetune(args) -> int:
    """LoRA fine-tuning under the serving SWAA mask (resumable from OUT/checkpoint)."""
    from swaa_train.config import TrainConfig
    from swaa_train.finetune import finetune

    cfg = TrainConfig(data=args.data, out=args.out, swaa=swaa_from_args(args, model_given=args.model is not None),
                      rank=args.rank, alpha=args.alpha, lr=args.lr, epochs=args.epochs, max_steps=args.max_steps,
                      max_batch_tokens=args.max_batch_tokens, kernel=args.kernel, seed=args.seed,
                      save_every=args.save_every, limit=args.limit, gradient_checkpointing=not args.no_checkpointing,
                      lm_ratio=args.lm_ratio, lm_weight=args.lm_weight, fa_baseline=args.full_attention)
    _, hf, _ = _load_hf(args.model, args.device)
    s = finetune(cfg, hf)
    print(f"{s['steps']} steps on {s['examples']} examples ({s['kernel']}, {s['device']}): loss {s['first_loss']:.3f} → "
          f"{s['last_loss']:.3f}; adapter in {cfg.out}/adapter")
    return 0


def cmd_merge(args) -> int:
    """A Hugging Face folder with the adapter merged in: serve it with --model, no peft needed."""
    from swaa_train.merge import write_merged

    _, hf, tok = _load_hf(args.model, "cpu")
    write_merged(hf, tok, args.lora, args.out)
    print(f"wrote {args.out}")
    return 0


def add_training_commands(sub) -> None:
    d = sub.add_parser("distill", help="self-distilled training data from the model's own full-attention answers")
    d.add_argument("--model", default=None, help="HF folder or .gguf (default: the embedded model)")
    d.add_argument("--out", required=True, help="JSONL file (rerunning resumes it)")
    from swaa_train.distill import DistillConfig

    d.add_argument("--lengths", default=_csv(default(DistillConfig, "lengths")), help="prompt lengths in tokens")
    d.add_argument("--samples", type=int, default=default(DistillConfig, "samples"), help="prompts per task and length")
    d.add_argument("--tasks", default=_csv(default(DistillConfig, "tasks")), help="retrieval tasks (comma-separated)")
    d.add_argument("--seed", type=int, default=default(DistillConfig, "seed"), help="seed of the prompts")
    d.add_argument("--dtype", default=default(DistillConfig, "dtype"), choices=["bfloat16", "float32"], help="the teacher's dtype")
    d.add_argument("--lm-samples", type=int, default=default(DistillConfig, "lm_samples"),
                   help="LM rows per length: train-play excerpts whose last 128 tokens carry the teacher's top-k log-probs")
    d.add_argument("--lm-top-k", type=int, default=default(DistillConfig, "lm_top_k"), help="teacher log-probs kept per LM token")
    d.set_defaults(func=cmd_distill)

    f = sub.add_parser("finetune", help="SWA-aware LoRA fine-tuning (peft) under the serving mask "
                                        "(--full-attention: the full-attention baseline, no SWAA mask)")
    f.add_argument("--model", default=None, help="HF folder or .gguf (default: the embedded model)")
    f.add_argument("--data", required=True, help="JSONL from swaa distill")
    f.add_argument("--out", required=True, help="run folder: adapter/, log.jsonl, loss.png, checkpoint/")
    from swaa_train.config import TrainConfig

    f.add_argument("--device", default="auto", help="cpu, cuda, … (auto: CUDA if present)")
    f.add_argument("--rank", type=int, default=default(TrainConfig, "rank"), help="LoRA rank")
    f.add_argument("--alpha", type=int, default=default(TrainConfig, "alpha"), help="LoRA alpha")
    f.add_argument("--lr", type=float, default=default(TrainConfig, "lr"), help="peak learning rate")
    f.add_argument("--epochs", type=int, default=default(TrainConfig, "epochs"), help="passes over the data")
    f.add_argument("--max-steps", type=int, default=default(TrainConfig, "max_steps"),
                   help="stop after this many steps (default: the epochs decide)")
    f.add_argument("--max-batch-tokens", type=int, default=default(TrainConfig, "max_batch_tokens"), help="tokens per packed batch")
    f.add_argument("--kernel", default=default(TrainConfig, "kernel"), choices=["auto", "sdpa", "flex"],
                   help="training attention: masked SDPA or FlexAttention (auto: flex on CUDA)")
    f.add_argument("--seed", type=int, default=default(TrainConfig, "seed"), help="seed of the adapter's initialisation and the data order")
    f.add_argument("--save-every", type=int, default=default(TrainConfig, "save_every"), help="checkpoint every N steps")
    f.add_argument("--limit", type=int, default=default(TrainConfig, "limit"), help="use only the first N examples")
    f.add_argument("--no-checkpointing", action="store_true", help="keep activations (faster, more memory)")
    f.add_argument("--lm-ratio", type=float, default=default(TrainConfig, "lm_ratio"),
                   help="LM rows per retrieval row, chosen from the data's (default: every row of the data)")
    f.add_argument("--lm-weight", type=float, default=default(TrainConfig, "lm_weight"),
                   help="weight of the LM rows' KL to the teacher beside the answers' cross-entropy")
    add_swaa_args(f)
    f.set_defaults(func=cmd_finetune)

    m = sub.add_parser("merge", help="write a model folder with a LoRA adapter merged into the weights")
    m.add_argument("--model", default=None, help="the base model (default: the embedded model)")
    m.add_argument("--lora", required=True, help="peft adapter folder")
    m.add_argument("--out", required=True, help="folder to write the merged model to")
    m.set_defaults(func=cmd_merge)


def add_serve_args(s: argparse.ArgumentParser) -> None:
    from swaa_server.config import ServerConfig

    s.add_argument("--host", default=default(ServerConfig, "host"), help="address to bind (0.0.0.0 in containers)")
    s.add_argument("--port", type=int, default=default(ServerConfig, "port"), help="gRPC port")
    s.add_argument("--grace", type=float, default=default(ServerConfig, "grace_s"),
                   help="seconds in-flight streams get after SIGTERM, once the drain delay is over")
    s.add_argument("--drain-delay", type=float, default=default(ServerConfig, "drain_delay_s"),
                   help="seconds after SIGTERM during which health says NOT_SERVING but new calls are still served, "
                        "so probes and load balancers take the server out first")
    s.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (-1: off)")
    s.add_argument("--metrics-host", default=default(ServerConfig, "metrics_host"),
                   help="address the metrics endpoint binds (default: the --host address)")
    s.add_argument("--max-message-bytes", type=int, default=default(ServerConfig, "max_message_bytes"),
                   help="largest request or response message")
    s.add_argument("--keepalive", type=float, default=default(ServerConfig, "keepalive_s"),
                   help="seconds between keepalive pings on idle connections")
    s.add_argument("--max-connection-age", type=float, default=default(ServerConfig, "max_connection_age_s"),
                   help="seconds before a connection is asked to close (calls in flight finish), so clients balancing "
                        "over a headless Service re-resolve it and find new pods (0: never)")
    a = s.add_argument_group("auth and TLS")
    a.add_argument("--auth-token-file", default=None, help="file of accepted bearer tokens, one per line")
    a.add_argument("--auth-token-env", default="SWAA_AUTH_TOKENS",
                   help="environment variable holding accepted bearer tokens, comma-separated (default: %(default)s)")
    a.add_argument("--tls-cert", default=None, help="server certificate chain (PEM)")
    a.add_argument("--tls-key", default=None, help="server private key (PEM)")
    a.add_argument("--tls-client-ca", default=None, help="CA (PEM) that client certificates must chain to: mutual TLS")
    r = s.add_argument_group("replicas (Ray)")
    r.add_argument("--replicas", type=int, default=0,
                   help="run N engine replicas as Ray actors behind this front end (0: one engine in this process)")
    r.add_argument("--ray-address", default=None, help="join this Ray cluster ('auto' or host:port); default: start one here")
    r.add_argument("--gpus-per-replica", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves for each replica")
    r.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs a local Ray instance may use (default: all)")
    r.add_argument("--ray-object-store-bytes", type=int, default=None, help="a local Ray instance's object store size")
    o = s.add_argument_group("logs")
    o.add_argument("--log-format", choices=["json", "console"], default="json", help="one JSON object per line, or for a person")
    o.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info", help="least severe level logged")
    o.add_argument("--log-prompts", action="store_true", help="include prompt text in request logs (off: it may be personal data)")


def env_defaults(parser: argparse.ArgumentParser, environ, prefix: str = "SWAA_") -> None:
    """Every option of ``parser`` may come from ``SWAA_<OPTION>`` (e.g. SWAA_PORT, SWAA_FA_DECODE): containers and
    ConfigMaps set environment, flags still win. Booleans accept 1/true/yes and 0/false/no."""
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help",):
            continue
        raw = environ.get(prefix + action.dest.upper())
        if raw is None:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise SystemExit(f"swaa: {prefix + action.dest.upper()}={raw!r} is not a boolean")
            value = raw.lower() in ("1", "true", "yes")
            value = value if isinstance(action, argparse._StoreTrueAction) else not value
        else:
            try:
                value = action.type(raw) if action.type else raw
            except ValueError:
                raise SystemExit(f"swaa: {prefix + action.dest.upper()}={raw!r} is not a valid {action.dest}") from None
        parser.set_defaults(**{action.dest: value})


def build_parser(environ=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swaa", description="SWAA inference service", formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    plain = sub.add_parser

    def add_parser(name, **kw):  # every command shows its flags' defaults
        return plain(name, formatter_class=HelpFormatter, **kw)

    sub.add_parser = add_parser

    s = sub.add_parser("serve", help="start the gRPC service (default: the embedded model on 127.0.0.1:50051); "
                                     "every flag may also come from SWAA_<FLAG> in the environment")
    add_serve_args(s)
    add_engine_args(s)
    s.set_defaults(func=cmd_serve)
    if environ is not None:
        env_defaults(s, environ)

    g = sub.add_parser("generate", help="stream a generation from a server (--offline: run the engine in this process)")
    g.add_argument("prompt", help="the prompt (sent as one user chat message unless --no-chat)")
    g.add_argument("--offline", action="store_true", help="load the model here instead of calling a server")
    g.add_argument("--no-chat", dest="chat", action="store_false", help="send the prompt as raw text, not a chat message")
    add_client_args(g)
    add_sampling_args(g)
    add_engine_args(g)
    g.set_defaults(func=cmd_generate)

    h = sub.add_parser("health", help="grpc.health.v1 status of a server (exit 0 when SERVING)")
    h.add_argument("--service", default="", help="service name ('' = the whole server)")
    add_client_args(h)
    h.set_defaults(func=cmd_health)

    e = sub.add_parser("eval", help="long-context quality (passkey, multi-key, LM loss) per SWAA config and length")
    e.add_argument("--model", default=None, help="HF folder or .gguf (default: the embedded model)")
    e.add_argument("--out", default="eval-out", help="results folder (rerunning resumes it)")
    from swaa_eval.harness import EvalConfig

    e.add_argument("--window", type=int, default=default(EvalConfig, "window"), help="the sliding window of the grid's configs")
    e.add_argument("--sinks", type=int, default=default(EvalConfig, "sinks"), help="sink tokens of the grid's configs")
    e.add_argument("--tail", type=int, default=default(EvalConfig, "tail"),
                   help="question-tail knob: last T prompt tokens read fully (fa_decode layers)")
    e.add_argument("--lengths", default=_csv(default(EvalConfig, "lengths")), help="context lengths in tokens")
    e.add_argument("--samples", type=int, default=default(EvalConfig, "samples"), help="samples per task, config and length")
    e.add_argument("--tasks", default=_csv(default(EvalConfig, "tasks")), help="tasks (comma-separated)")
    e.add_argument("--configs", default="", help="comma-separated grid names (default: all)")
    e.add_argument("--seed", type=int, default=default(EvalConfig, "seed"), help="seed of the samples")
    e.add_argument("--dtype", default=default(EvalConfig, "dtype"), choices=["bfloat16", "float32"], help="model dtype")
    e.add_argument("--max-batched-tokens", type=int, default=default(EvalConfig, "max_num_batched_tokens"),
                   help="prefill chunk budget per engine step (and the LM-loss task's scoring chunk)")
    e.add_argument("--prompts", default=None, metavar="FILE",
                   help="run the samples of this file (from --write-prompts) instead of building them from the texts")
    e.add_argument("--write-prompts", default=None, metavar="FILE",
                   help="only build the samples (token ids, gzipped JSON lines) into FILE; runs no model")
    e.add_argument("--lora", default=None, metavar="DIR", help="evaluate with this peft adapter merged in")
    e.set_defaults(func=cmd_eval)

    add_training_commands(sub)

    from swaa_server.loadgen import LoadConfig

    ld = sub.add_parser("load", help="bounded load generator against a local server (loopback only)")
    ld.add_argument("--target", default=default(LoadConfig, "target"), help="host:port of a loopback server")
    ld.add_argument("--token", default=None, help="bearer token")
    ld.add_argument("--concurrency", type=int, default=default(LoadConfig, "concurrency"), help="concurrent streams")
    ld.add_argument("--requests", type=int, default=default(LoadConfig, "requests"),
                    help="stop after this many requests (or at --duration, whichever comes first)")
    ld.add_argument("--duration", type=float, default=default(LoadConfig, "duration_s"),
                    help="stop issuing requests after this many seconds (default: no time limit)")
    ld.add_argument("--prompt-tokens", default="%d:%d" % default(LoadConfig, "prompt_tokens"), help="min:max random prompt length")
    ld.add_argument("--max-tokens", default="%d:%d" % default(LoadConfig, "max_tokens"), help="min:max output length")
    ld.add_argument("--cancel-fraction", type=float, default=default(LoadConfig, "cancel_fraction"),
                    help="share of streams the client cancels midway")
    ld.add_argument("--seed", type=int, default=default(LoadConfig, "seed"), help="seed of the request mix")
    ld.add_argument("--json", default=None, help="also write the report here")
    ld.set_defaults(func=cmd_load)

    i = sub.add_parser("info", help="model, SWAA config, cache layout, size and usage of a server (--json: everything)")
    i.add_argument("--json", action="store_true", help="print the whole ModelInfo as JSON (one entry per layer)")
    add_client_args(i)
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser(os.environ).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # config, request and missing-file errors name what is wrong
        print(f"swaa {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # a server's answer (swaa_client.errors): print it, no traceback. Checked by module so that commands which
        # never import the SDK (distill, finetune) do not need it importable.
        if type(e).__module__ == "swaa_client.errors":
            print(f"swaa {args.command}: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
