"""The tiny model's skills: seeded synthetic questions with exactly checkable answers.

`data/build_tiny_model.py` trains `data/mili-tiny-qwen3` on conversations drawn from here, and
`mili eval` asks fresh ones (from a seed namespace training never uses) and checks the replies.
A RoPE off-by-one or a KV-cache bug in the engine turns these right answers into wrong ones.

Skills (one user turn each, answered in one assistant turn):

- arithmetic: "What is 17 + 25?" -> "42"; operands of 1 to 3 digits, + or -, results may be negative.
- reverse:    "Reverse the words:\\nred cat sun" -> "sun cat red"; 1 to 8 words.
- sort:       "Sort the numbers:\\n52, 7, 31" -> "7, 31, 52"; 1 to 8 numbers below 100, ascending.
- recall:     a system prompt lists a table of up to 64 "- name: code" lines (about 600 tokens at
              64); "What is Mia's code?" -> "4821". Many questions share one table: the
              prefix-caching workload.
- copy:       "Copy this sentence exactly:\\nThe red cat sat." -> the sentence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SKILLS = ("arithmetic", "reverse", "sort", "recall", "copy")
MAX_LIST = 8            # reverse / sort lists hold 1..MAX_LIST items
SORT_BELOW = 100        # sort numbers are in [0, SORT_BELOW)
MAX_TABLE = 64          # recall tables hold up to MAX_TABLE entries
MAX_SENTENCE = 12       # copy sentences hold 3..MAX_SENTENCE words
TABLE_HEADER = "You keep this table of codes:"

WORDS = tuple("""
apple river stone cloud green table window bird music light garden silver paper yellow
orange forest winter summer candle mirror bread honey water ocean mountain valley shadow
rabbit tiger horse mouse lemon cherry pepper salt sugar coffee milk butter cheese rice
blue red black white purple pink brown gold copper iron glass wood wool cotton silk
chair door floor roof wall road bridge tower castle island desert field farm village city
train boat plane wheel engine rocket planet star moon sun rain snow wind storm thunder
king queen knight farmer doctor teacher sailor pilot baker painter singer dancer
happy quiet brave gentle clever lucky proud calm bright dark soft loud fast slow
small large tall short warm cold young old early late
run jump swim read write sing dance paint cook build carry throw catch climb sleep dream
book letter story song poem picture map key lock box bag cup plate spoon fork knife
fish frog snake eagle owl wolf bear fox deer lion whale shark seal duck goose
nine seven three eleven twelve twenty hundred
""".split())  # noqa: SIM905 (word lists read best as text)

NAMES = tuple("""
Ada Alan Alice Amir Anna Arlo Aria Ben Bella Bruno Carl Cara Chen Chloe Dan Dara Dev Diego
Eden Eli Ella Emma Eric Eva Ezra Felix Finn Flora Gabe Gina Grace Hana Hugo Ian Ida Ingrid
Ivan Ivy Jack Jade Jamal Jane Jin Joel Jude Kai Kara Kenji Kim Lara Leo Lena Liam Lily Luca
Luna Mae Malik Maria Mark Max Maya Mia Milo Mina Nadia Nate Nia Nico Nina Noah Nora Olga
Omar Otto Owen Paul Pia Priya Quinn Raj Rosa Ruby Ryan Sam Sara Sean Sofia Tara Ted Theo Tom
Uma Vera Victor Vik Wade Wendy Xena Yara Yuki Yusuf Zane Zara Zoe
""".split())  # noqa: SIM905 (word lists read best as text)


@dataclass(frozen=True)
class Question:
    """One question: the chat messages to send and the exact reply expected."""

    skill: str
    messages: list[dict] = field(hash=False)
    answer: str


def check(question: Question, reply: str) -> bool:
    """True when the reply is exactly the expected answer (surrounding whitespace ignored)."""
    return reply.strip() == question.answer


def _number(rng: random.Random) -> int:
    digits = rng.randint(1, 3)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def arithmetic(rng: random.Random) -> Question:
    a, b = _number(rng), _number(rng)
    op = rng.choice("+-")
    result = a + b if op == "+" else a - b
    return Question("arithmetic", [{"role": "user", "content": f"What is {a} {op} {b}?"}], str(result))


def reverse(rng: random.Random) -> Question:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, MAX_LIST))]
    prompt = "Reverse the words:\n" + " ".join(words)
    return Question("reverse", [{"role": "user", "content": prompt}], " ".join(reversed(words)))


def sort(rng: random.Random) -> Question:
    numbers = [rng.randrange(SORT_BELOW) for _ in range(rng.randint(1, MAX_LIST))]
    prompt = "Sort the numbers:\n" + ", ".join(map(str, numbers))
    return Question("sort", [{"role": "user", "content": prompt}], ", ".join(map(str, sorted(numbers))))


def copy(rng: random.Random) -> Question:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, MAX_SENTENCE))]
    sentence = " ".join(words).capitalize() + "."
    return Question("copy", [{"role": "user", "content": "Copy this sentence exactly:\n" + sentence}], sentence)


def code_table(rng: random.Random, size: int) -> dict[str, str]:
    """`size` distinct names, each with a 4-digit code."""
    if not 1 <= size <= len(NAMES):
        raise ValueError(f"size must be in [1, {len(NAMES)}], got {size}")
    return {name: f"{rng.randrange(10_000):04d}" for name in rng.sample(NAMES, size)}


def table_prompt(table: dict[str, str]) -> str:
    return "\n".join([TABLE_HEADER] + [f"- {name}: {code}" for name, code in table.items()])


def recall_question(name: str) -> str:
    return f"What is {name}'s code?"


def recall(rng: random.Random, table: dict[str, str] | None = None) -> Question:
    """A question about one entry of `table` (a fresh table of 1..MAX_TABLE entries if None)."""
    table = table or code_table(rng, rng.randint(1, MAX_TABLE))
    name = rng.choice(list(table))
    messages = [{"role": "system", "content": table_prompt(table)}, {"role": "user", "content": recall_question(name)}]
    return Question("recall", messages, table[name])


GENERATORS = {"arithmetic": arithmetic, "reverse": reverse, "sort": sort, "recall": recall, "copy": copy}


def eval_suite(n: int, seed: int, *, questions_per_table: int = 10) -> dict[str, list[Question]]:
    """`n` questions per skill, plus "recall@64" (tables of exactly MAX_TABLE entries).

    Recall questions come in groups of `questions_per_table` sharing one table (one system
    prompt), the way many requests share a cached prefix. The seed namespace ("eval") is
    disjoint from the one training draws from ("train").
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    suite: dict[str, list[Question]] = {}
    for skill in SKILLS + ("recall@64",):
        rng = random.Random(f"eval/{skill}/{seed}")
        if skill.startswith("recall"):
            questions: list[Question] = []
            while len(questions) < n:
                size = MAX_TABLE if skill == "recall@64" else rng.randint(1, MAX_TABLE)
                table = code_table(rng, size)
                questions += [recall(rng, table) for _ in range(min(questions_per_table, n - len(questions)))]
            suite[skill] = [Question(skill, q.messages, q.answer) for q in questions]
        else:
            suite[skill] = [GENERATORS[skill](rng) for _ in range(n)]
    return suite
