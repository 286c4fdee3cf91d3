"""Chunk coalescing: what a lagging consumer receives equals what it would have received token by token."""

import asyncio

from swaa_engine.outputs import Completion, StreamChunk, TokenLogprob, Timings, Usage, merge_chunks, take_ready
from swaa_engine.sequence import FinishReason


def chunks():
    out = [StreamChunk("r", [i], f"t{i}", [TokenLogprob(i, -0.5 * i)]) for i in range(4)]
    out.append(StreamChunk("r", [9], "!", [TokenLogprob(9, -1.0)], True, FinishReason.STOP, "!", None, Usage(3, 5),
                           Timings(0.1, 0.2, 0.3)))
    return out


def test_merge_keeps_order_and_end_fields():
    cs = chunks()
    m = merge_chunks(cs)
    assert m.token_ids == [0, 1, 2, 3, 9] and m.text == "t0t1t2t3!"
    assert [lp.token_id for lp in m.logprobs] == [0, 1, 2, 3, 9]
    assert m.finished and m.finish_reason is FinishReason.STOP and m.usage == Usage(3, 5) and m.stop == "!"
    assert Completion.from_chunks([], [m]) == Completion.from_chunks([], cs)
    assert merge_chunks(cs[:1]) is cs[0]


def test_take_ready_merges_what_is_waiting_and_stops_at_the_end_or_an_error():
    async def run():
        q = asyncio.Queue()
        cs = chunks()
        for c in cs[1:3]:
            q.put_nowait(c)
        merged, extra = take_ready(cs[0], q)
        assert merged.token_ids == [0, 1, 2] and extra is None and q.empty()
        # an error after a chunk: the chunk goes out first, then the error
        q.put_nowait(RuntimeError("boom"))
        merged, extra = take_ready(cs[3], q)
        assert merged is cs[3] and isinstance(extra, RuntimeError)
        # nothing is taken past the finished chunk
        q.put_nowait(cs[4])
        q.put_nowait(StreamChunk("r", [5]))
        merged, extra = take_ready(cs[3], q)
        assert merged.finished and merged.token_ids == [3, 9] and q.qsize() == 1
        # a consumer that keeps up sees single chunks unchanged
        merged, extra = take_ready(cs[0], asyncio.Queue())
        assert merged is cs[0] and extra is None

    asyncio.run(run())
