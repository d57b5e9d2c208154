"""Chapter 05 plumbing: the prefix-sharing workloads, the drawings and `mili bench cache` run and
report sensible numbers at tiny sizes."""

import json

import matplotlib.pyplot as plt

from mili.bench.cache import main as bench_main
from mili.cache import BlockManager, RadixCache
from mili.cache.plots import draw_block_tables, draw_radix_tree
from mili.cache.workloads import multi_turn_chats, replay, shared_system_prompt


def test_a_shared_system_prompt_is_served_from_the_cache():
    sessions = shared_system_prompt(24, 256, user_len=(8, 16), answer_len=(4, 8))
    cached = replay(sessions, 512, max_running=4)
    assert cached.hit_rate > 0.7, f"hit rate {cached.hit_rate:.0%}: 20 of 24 users should reuse the 256-token prompt"
    assert replay(sessions, 512, max_running=4, use_cache=False).hit_rate == 0.0


def test_later_turns_of_a_chat_hit_more_than_the_first():
    result = replay(multi_turn_chats(4, 3), 1024)
    assert result.hit_rate_of_turn(2) > result.hit_rate_of_turn(0)
    tight = replay(multi_turn_chats(8, 3), 60, max_running=4)
    assert tight.evictions > 0 and 0.0 <= tight.hit_rate <= 1.0


def test_drawings_render():
    cache = RadixCache(2)
    manager = BlockManager(8, 2, cache)
    manager.allocate("a", [1, 2, 3, 4, 5])
    manager.free("a", [1, 2, 3, 4, 5])
    manager.allocate("b", [1, 2, 3, 4, 9])
    manager.fork("b", "c")
    fig, (top, bottom) = plt.subplots(2, 1)
    draw_block_tables(manager, ["b", "c"], top)
    draw_radix_tree(cache, bottom)
    plt.close(fig)


def test_bench_cache_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "cache.json", tmp_path / "cache.png"
    assert bench_main(["--ops", "400", "--batch", "8", "--json", str(out), "--plot", str(png)]) == 0
    results = json.loads(out.read_text())
    assert results["mixed_total"]["ops"] >= 400 and results["decode_step"]["us_per_step"] > 0
    assert {"gpu", "torch", "git_commit", "cpu"} <= set(results["meta"]) and png.stat().st_size > 0
