"""Prefix-sharing workloads replayed through `BlockManager` + `RadixCache` (chapter 05).

A *session* is a conversation: a system prompt, then turns of (user message, model answer). The
prompt of turn k is the system prompt and every earlier message and answer, then the new user
message; so turn k+1 starts with everything turn k computed. One-turn sessions that share a system
prompt model an assistant serving many users; several turns model multi-turn chat.

`replay` admits turns FIFO (a session's next turn only after its previous one has finished),
keeps up to `max_running` sequences decoding one token per step (preempting the latest admitted
when blocks run out, as the engine does; it restarts later, from its cached prefix), and frees each finished turn into
the prefix cache with the tokens whose K/V it wrote (prompt + answer, less the last answer token,
which was sampled but never fed back). Answers are fixed token lists: no model runs here.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from mili.cache import BlockManager, RadixCache

VOCAB = 151_000


@dataclass
class Session:
    system: list[int]
    turns: list[tuple[list[int], list[int]]]  # (user message, answer)

    def prompt(self, turn: int) -> list[int]:
        tokens = list(self.system)
        for user, answer in self.turns[:turn]:
            tokens += user + answer
        return tokens + self.turns[turn][0]


@dataclass
class ReplayResult:
    hit_rate: float
    evictions: int
    preemptions: int = 0
    queried_by_turn: dict[int, int] = field(default_factory=dict)
    hit_by_turn: dict[int, int] = field(default_factory=dict)

    def hit_rate_of_turn(self, turn: int) -> float:
        return self.hit_by_turn.get(turn, 0) / max(self.queried_by_turn.get(turn, 0), 1)


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def shared_system_prompt(num_users: int, system_len: int, *, num_systems: int = 1, user_len=(16, 128),
                         answer_len=(16, 128), seed: int = 0) -> list[Session]:
    """One-turn sessions; each starts with one of `num_systems` system prompts of system_len tokens."""
    rng = random.Random(seed)
    systems = [_tokens(rng, system_len) for _ in range(num_systems)]
    return [Session(rng.choice(systems), [(_tokens(rng, rng.randint(*user_len)), _tokens(rng, rng.randint(*answer_len)))])
            for _ in range(num_users)]


def multi_turn_chats(num_chats: int, num_turns: int, *, system_len: int = 64, user_len=(16, 96),
                     answer_len=(32, 160), seed: int = 0) -> list[Session]:
    """num_chats conversations of num_turns turns sharing one system prompt."""
    rng = random.Random(seed)
    system = _tokens(rng, system_len)
    return [Session(system, [(_tokens(rng, rng.randint(*user_len)), _tokens(rng, rng.randint(*answer_len)))
                             for _ in range(num_turns)]) for _ in range(num_chats)]


def replay(sessions: list[Session], num_blocks: int, block_size: int = 16, *, policy: str = "lru",
           max_cached_tokens: int | None = None, max_running: int = 8, use_cache: bool = True,
           cache_after_prefill: bool = True) -> ReplayResult:
    """Run every turn of every session through a fresh manager; return the prefix-cache hit rates.
    cache_after_prefill: offer each prompt to the cache right after its prefill step
    (`BlockManager.cache_prefix`), not only when the turn finishes."""
    cache = RadixCache(block_size, policy=policy, max_cached_tokens=max_cached_tokens) if use_cache else None
    manager = BlockManager(num_blocks, block_size, cache)
    ready = deque((index, 0) for index in range(len(sessions)))  # (session, turn) ready to run
    running: dict[tuple[int, int], tuple[list[int], list[int], int]] = {}  # -> (prompt, answer, generated)
    result = ReplayResult(0.0, 0)
    while ready or running:
        admitted = []
        while ready and len(running) < max_running and manager.can_allocate(sessions[ready[0][0]].prompt(ready[0][1])):
            index, turn = ready.popleft()
            prompt = sessions[index].prompt(turn)
            cached = manager.allocate((index, turn), prompt)
            result.queried_by_turn[turn] = result.queried_by_turn.get(turn, 0) + len(prompt)
            result.hit_by_turn[turn] = result.hit_by_turn.get(turn, 0) + cached
            running[(index, turn)] = (prompt, sessions[index].turns[turn][1], 0)
            admitted.append(((index, turn), prompt))
        if cache_after_prefill:  # this step's prefills wrote the prompts: later admissions may share them
            for key, prompt in admitted:
                manager.cache_prefix(key, prompt)
        if not running:
            raise ValueError(f"num_blocks={num_blocks} cannot hold the next prompt even with an empty cache")
        for key, (prompt, answer, generated) in list(running.items()):
            if key not in running:
                continue  # preempted in this step
            if generated + 1 < len(answer):  # feed the sampled token back: one more slot
                while key in running and not manager.can_append(key):
                    # preempt the latest admitted, possibly key itself, so the oldest always progresses
                    victim = next(reversed(running))
                    if victim == key and len(running) == 1:
                        raise ValueError(f"num_blocks={num_blocks} cannot hold one running turn")
                    victim_prompt, victim_answer, victim_generated = running.pop(victim)
                    manager.free(victim, victim_prompt + victim_answer[:victim_generated])
                    ready.appendleft(victim)
                    result.preemptions += 1
                if key not in running:
                    continue
                manager.append_slots(key)
                running[key] = (prompt, answer, generated + 1)
                continue
            del running[key]
            manager.free(key, prompt + answer[:-1])
            index, turn = key
            if turn + 1 < len(sessions[index].turns):
                ready.append((index, turn + 1))
    stats = manager.stats
    result.hit_rate, result.evictions = stats.hit_rate, stats.evictions
    return result
