"""The `swaa` command line: one program, subcommands registered in COMMANDS."""

from __future__ import annotations

import argparse
import sys


def add_swaa_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SWAA (omit --window for the embedded model's default; --full-attention for none)")
    g.add_argument("--window", type=int, help="sliding window W: a query sees itself and W-1 earlier tokens")
    g.add_argument("--sinks", type=int, default=None, help="first k tokens stay visible to every sliding-layer query")
    g.add_argument("--fa-decode", nargs="?", const="all", default=None, metavar="LAYERS",
                   help="generated tokens attend to everything (all sliding layers, or a layer list/pattern)")
    g.add_argument("--fa-layers", default=None, metavar="LAYERS", help="full-attention layers: 1,3,5 | odd | even | every:N[:offset]")
    g.add_argument("--full-attention", action="store_true", help="no sliding window at all")


def swaa_from_args(args, model_given: bool):
    from swaa_engine.defaults import EMBEDDED_SWAA
    from swaa_engine.swaa import SWAAConfig

    if args.full_attention:
        return SWAAConfig()
    if args.window is None:
        if args.sinks is not None or args.fa_decode is not None or args.fa_layers is not None:
            return SWAAConfig(sinks=args.sinks or 0, fa_decode=args.fa_decode or False, fa_layers=args.fa_layers or ())  # raises: needs window
        return SWAAConfig() if model_given else EMBEDDED_SWAA
    fa_decode = {None: False, "all": True}.get(args.fa_decode, args.fa_decode)
    return SWAAConfig(window=args.window, sinks=args.sinks or 0, fa_decode=fa_decode, fa_layers=args.fa_layers or ())


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Hugging Face folder or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--cache-bytes", type=int, default=None, help="KV cache budget in bytes (wins over --cache-fraction)")
    p.add_argument("--cache-fraction", type=float, default=0.5, help="KV cache budget as a fraction of free device memory")
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
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens),
        cache=CacheConfig(block_size=args.block_size, budget_bytes=args.cache_bytes, budget_fraction=args.cache_fraction),
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def cmd_generate(args) -> int:
    if not args.offline:
        print("swaa generate: talking to a server arrives with the gRPC service; use --offline to run the engine here",
              file=sys.stderr)
        return 2
    from swaa_engine.engine import LLMEngine
    from swaa_engine.sampling_params import SamplingParams

    config = engine_config_from_args(args)
    print(f"loading {config.model or 'embedded SmolLM2-135M-Instruct'} ({config.swaa.describe()}) …", file=sys.stderr)
    engine = LLMEngine(config)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    engine.add_request(prompt, params)
    while engine.has_work():
        for chunk in engine.step():
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            if chunk.finished:
                u, t = chunk.usage, chunk.timings
                print(f"\n[{chunk.finish_reason.value}; {u.prompt_tokens} prompt + {u.completion_tokens} generated tokens; "
                      f"first token {t.ttft_s:.2f}s, total {t.total_s:.2f}s]", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    import asyncio
    import logging

    from swaa_server.app import ServerConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = engine_config_from_args(args)
    asyncio.run(serve(config, ServerConfig(host=args.host, port=args.port, grace_s=args.grace)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swaa", description="SWAA inference service")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text (with --offline: run the engine in this process)")
    g.add_argument("prompt")
    g.add_argument("--offline", action="store_true", help="load the model here instead of calling a server")
    g.add_argument("--no-chat", dest="chat", action="store_false", help="send the prompt as raw text, not a chat message")
    add_engine_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="start the gRPC service (default: the embedded model on 127.0.0.1:50051)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--grace", type=float, default=25.0, help="seconds in-flight streams get after SIGTERM")
    add_engine_args(s)
    s.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # config and request errors carry the field in their message
        print(f"swaa {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
