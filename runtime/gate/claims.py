"""Claims the evidence states the other way round: a change reversed, a negation left out or added, a
comparison turned round. Every word may be the evidence's; only the claim differs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

from runtime.gate.common import _STOPWORDS
from runtime.gate.figures import _GROUPS, _number

_UP = frozenset("""increase increased increases increasing raise raised raises raising rose rise rises rising
    elevate elevates elevated higher greater more""".split())
_DOWN = frozenset("""decrease decreased decreases decreasing reduce reduced reduces reducing reduction reductions
    lower lowered lowers lowering fell declined declines declining diminished dropped less fewer smaller""".split())
_BETTER = frozenset("improve improved improves improving improvement improvements".split())
"""A change with no opposite among these words: "improved survival" is neither up nor down, so it
turns nothing round; it counts where the evidence denies it (denied_changes)."""
_NEGATIONS = frozenset("not no never without neither nor cannot failed fails".split())  # and every "...n't"
_OBJECT_FILLER = frozenset("""the a an of in on at for to by with than its their his her this that these those
    significantly significant markedly slightly substantially statistically was were is are be been""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*+|[.;:!?,()\[\]]")
OBJECT_WORDS = 1
"""How many words after a change word say what changes. Measured on PubMedQA (benchmarks/gate_check.py,
test / dev): one word catches 81% / 80% of conclusions turned the other way round and fails 6 / 3 of
500 honest ones ("less likely" where the abstract's "more likely" is about something else); two words
catch 41% / 56% and fail 2 / 3."""


NEGATION_WORDS = 5
NEGATION_CONTEXT = 3
"""Words either side of a negation that an answer must share with the evidence, word for word, before
the negation missing (or added) counts as a claim turned round (fewer where the clause starts or
ends). Measured on gate_check's answers (test + dev): two words failed an honest conclusion (its
"benefits are not distributed on the basis of need" where the abstract states the principle
"benefits are distributed on the basis of need"); three fail none and still catch every quote with
its negation left out."""


def _is_negation(token: str) -> bool:
    return token in _NEGATIONS or token.endswith("n't")


def _negated(tokens: list[str], i: int) -> bool:
    """A negation among the NEGATION_WORDS words before tokens[i], in its clause ("not associated
    with the higher risk" is negated; "No. Statins increased" is not)."""
    for t in reversed(tokens[max(0, i - NEGATION_WORDS):i]):
        if not t[0].isalnum():
            return False
        if _is_negation(t):
            return True
    return False


_PREPOSITIONS = frozenset("by with in among after during from over following under at for when per of on".split())
_AUXILIARIES = frozenset("was were is are be been being became become becomes remained remains got gets has have had".split())
_ADVERBS = frozenset("significantly markedly slightly substantially statistically also further much far even still".split())
_CONJUNCTIONS = frozenset("and or but nor yet so".split())


def _is_figure(token: str) -> bool:
    return any(c.isdigit() for c in token)


def _subject(tokens: list[str], i: int) -> str | None:
    """The word a change word at tokens[i] is said of when it has no object ("mortality was
    reduced", "mortality increased with statins"): the nearest word before it, auxiliaries, adverbs
    and figures skipped. None where that is no subject: a clause start, an article or preposition
    ("with decreases in", "a reduction"), a conjunction, or a word inside a phrase ("per patient")."""
    j = i - 1
    while j >= max(0, i - 6) and (tokens[j] in _AUXILIARIES or tokens[j] in _ADVERBS or tokens[j].endswith("ly")
                      or _is_figure(tokens[j])):
        j -= 1
    if j < 0 or i - j > 5:
        return None  # nothing before it, or only auxiliaries and adverbs as far as we look
    word = tokens[j]
    if not word[0].isalnum() or word in _OBJECT_FILLER or word in _PREPOSITIONS or word in _CONJUNCTIONS:
        return None
    if j > 0 and tokens[j - 1] in _PREPOSITIONS:
        return None
    return word


_DENIAL_GAP = frozenset("""to do does did could would can will may might should shall any significant significantly
    statistically further""".split())
"""Words that may stand between a negation and the change it denies: "did not significantly reduce",
"failed to reduce", "no significant reduction"."""


def _denied(tokens: list[str], i: int) -> bool:
    """Whether the change word at tokens[i] is denied by the negation right before it ("did not
    reduce", "failed to increase", "no significant reduction", "was not reduced"), only auxiliaries
    and adverbs between. Stricter than _negated: "patients who did not smoke had reduced mortality"
    denies no reduction."""
    for j in range(i - 1, max(-1, i - 5), -1):
        t = tokens[j]
        if _is_negation(t):
            return True
        if not (t in _DENIAL_GAP or t in _AUXILIARIES or t in _ADVERBS):
            return False
    return False


_Changes = dict[tuple[int, tuple[str, ...]], tuple[str, str]]


class _ReadChanges(NamedTuple):
    stated: _Changes  # no negation in the words before: what the text says happened
    denied: _Changes  # a negation right before (_denied): what it says did not happen
    not_denied: _Changes  # every other: what it may say happened
    plain: _Changes  # stated, and no negation after it in its clause ("the reduction ... was not significant" is not)


_CLAUSE_AFTER = 12
"""Words after a change word looked at for a negation in its clause."""


def _negated_after(tokens: list[str], i: int) -> bool:
    """A negation after tokens[i] in its clause: "the reduction in mortality was not significant",
    "an increase in bleeding was not seen" state no change."""
    for t in tokens[i + 1:i + 1 + _CLAUSE_AFTER]:
        if t in _CLAUSE_END or t in _CLAUSE_BREAKS:
            return False
        if _is_negation(t):
            return True
    return False


@lru_cache(maxsize=8)
def _read_changes(text: str) -> _ReadChanges:
    """(+1 up / -1 down / 2 improved, what changes) -> (as written, the change word), for each change a
    text states: "reduced 30-day mortality" is (-1, ('30-day', 'mortality')) and, as a figure says
    which mortality but not what changes, also (-1, ('mortality',)). What changes is the next
    OBJECT_WORDS words of the clause (articles and fillers skipped, figures kept but not counted),
    and, when the change word has no object (the clause ends or a preposition follows: "mortality
    was reduced", "mortality rose with age"), also the word it is said of. Sorted three ways by the
    negation before it; "improved" (sign 2) has no opposite. Cached: the direction and denial checks
    read the same answer and evidence (callers only read the result)."""
    tokens = _TOKEN.findall(text.lower().replace("\u2019", "'"))  # didn’t = didn't
    read = _ReadChanges({}, {}, {}, {})
    for i, word in enumerate(tokens):
        sign = 1 if word in _UP else -1 if word in _DOWN else 2 if word in _BETTER else 0
        if not sign:
            continue
        found = [read.denied if _denied(tokens, i) else read.not_denied]
        if not _negated(tokens, i):
            found.append(read.stated)
            if not _negated_after(tokens, i):
                found.append(read.plain)
        changed: list[str] = []
        words = 0
        for t in tokens[i + 1:i + 1 + 4 * OBJECT_WORDS + 2]:
            if not t[0].isalnum():
                break  # the clause ends
            if t in _OBJECT_FILLER:
                continue
            changed.append(t)
            words += not _is_figure(t)  # "30-day" says which mortality, not what changes
            if words == OBJECT_WORDS:
                break
        keys: list[tuple[tuple[int, tuple[str, ...]], tuple[str, str]]] = []
        if changed:
            written = " ".join([word, *changed])
            keys.append(((sign, tuple(changed)), (written, word)))
            if words:
                keys.append(((sign, tuple(t for t in changed if not _is_figure(t))), (written, word)))
        following = tokens[i + 1] if i + 1 < len(tokens) else "."
        if not following[0].isalnum() or following in _PREPOSITIONS:
            subject = _subject(tokens, i)
            if subject is not None:
                keys.append(((sign, (subject,)), (f"{subject} {word}", word)))
        for changes in found:
            for key, value in keys:
                changes.setdefault(key, value)
    return read


_FROM_TO = re.compile(r"\bfrom\s+(" + _GROUPS + r"\s?%?)\s+to\s+(" + _GROUPS + r"\s?%?)", re.IGNORECASE)


def _from_to(text: str) -> dict[tuple[str, str], str]:
    """("from" value, "to" value) -> as written, for every "from 12% to 8%" a text states."""
    return {(_number(m.group(1)), _number(m.group(2))): m.group(0) for m in _FROM_TO.finditer(text)}


def reversed_directions(output: str, retrieved: str) -> list[str]:
    """Changes the answer states the other way round from the retrieved evidence: "increased 30-day
    mortality" where the evidence says only that it reduced 30-day mortality, "from 8% to 12%" where
    it says from 12% to 8%. Figures and words alike are the evidence's while the claim is turned
    around. (The task is no evidence here: "Do statins reduce mortality?" states no change.) A
    comparison said from its other side ("aspirin was less effective than the drug" for "the drug was
    more effective than aspirin") turns no change round: converse_comparatives names it."""
    stated = _read_changes(retrieved).stated
    candidates = [(written, word, stated[(-sign, changed)][0])
                  for (sign, changed), (written, word) in _read_changes(output).stated.items()
                  if (-sign, changed) in stated and (sign, changed) not in stated]
    converse = converse_comparatives(output, retrieved) if candidates else set()
    turned = [f"{written} (the evidence: {theirs})" for written, word, theirs in candidates if word not in converse]
    turned = list(dict.fromkeys(turned))  # one claim can match both with and without its figure
    ranges = _from_to(retrieved)
    turned += [f"{written} (the evidence: {ranges[(b, a)]})" for (a, b), written in _from_to(output).items()
               if a != b and (b, a) in ranges and (a, b) not in ranges]
    return turned


def denied_changes(output: str, retrieved: str) -> list[str]:
    """Changes the answer states that the evidence says did not happen: "statin therapy reduced
    mortality" where it says statin therapy "did not reduce mortality" (or "failed to reduce", "no
    significant reduction in mortality"), "aspirin improved survival" for "failed to improve
    survival". The negation check compares words in place, so another form of the verb ("reduced"
    for "did not reduce") passed it. A change the evidence also states without denying it, anywhere,
    is no flip; the answer's own must have no negation in its clause ("the reduction in mortality was
    not significant" says what the evidence says)."""
    evidence = _read_changes(retrieved)
    if not evidence.denied:
        return []
    return list(dict.fromkeys(f"{written} (the evidence: {evidence.denied[key][0]}, denied)"
                              for key, (written, _) in _read_changes(output).plain.items()
                              if key in evidence.denied and key not in evidence.not_denied))


_NEGATORS = frozenset("not no never without lacking".split())
_CONTRACTED_NOT = re.compile(r"n't\b|(?<=\bcan)not\b")
_CLAUSE_END = frozenset(".;:!?")
_ABBREVIATED_VERSUS = re.compile(r"\bvs\.")  # "in men vs. women": no clause ends there


def _clause_tokens(text: str) -> list[str]:
    """Words and the marks that end a clause, with every negation a word of its own ("didn't",
    "cannot": "did not", "can not"), the same for the answer and the evidence: what the negation and
    comparison checks read. Commas and brackets are left out: "(NPBD) have not been" and
    "complaints, but no studies" read on across them."""
    text = _ABBREVIATED_VERSUS.sub("vs", _CONTRACTED_NOT.sub(" not", text.lower().replace("\u2019", "'")))
    return [t for t in _TOKEN.findall(text) if t[0].isalnum() or t in _CLAUSE_END]


_ASKING = frozenset("whether if".split())
_WHETHER = frozenset(["whether"])
"""What an answer asks: only a whether clause. An "if" there is a condition the answer states ("only
if indicated and simply because of ..." for the evidence's "and not simply because of ..."), and a
negation left out of it is still a flip (four of gate_check's such answers passed when it counted)."""


def _asked(tokens: list[str], asking_words: frozenset[str] = _ASKING) -> list[bool]:
    """For each token, whether it stands in a clause that asks rather than states ("to study whether
    HFNC are noisier than bubble CPAP"): from "whether" or "if" to the clause's end. What an aim asks
    affirms nothing, so an answer that negates it is no flip."""
    out, asking = [], False
    for t in tokens:
        if not t[0].isalnum():
            asking = False
        elif t in asking_words:
            asking = True
        out.append(asking)
    return out


def negation_flips(output: str, retrieved: str) -> list[str]:
    """Claims the answer makes without the negation the evidence gives them, or with one it does not:
    "statin therapy was associated with a lower risk" where the evidence says it "was not associated
    with" it, "there was a significant difference" for "no significant difference", or a "not" added
    to what the evidence affirms. The words either side of the negation (NEGATION_CONTEXT of them, or
    fewer up to where the clause starts or ends) must be the evidence's, word for word; a quote copied
    with its "not" left out passes the quote match (80 % of its 3-grams). The answer's wording must
    also be nowhere in the evidence (which may affirm it elsewhere), outside what an aim asks; what
    the answer itself asks ("the study assessed whether statins are associated with ...") claims
    nothing either. "without" and "lacking" are negations too: "programs with fellowships" for the
    evidence's "programs without fellowships" is a flip."""
    evidence, answer = _clause_tokens(retrieved), _clause_tokens(output)
    Context = tuple[tuple[str, ...], tuple[str, ...]]

    def around(tokens: list[str], end: int, start: int) -> Context | None:
        """The words before tokens[end] and from tokens[start] on, each side up to NEGATION_CONTEXT
        words or a clause's edge (kept, so both texts must have it there; a text's start and end count
        as one); None with no word on a side, NEGATION_CONTEXT words or fewer in all, or nothing but
        fillers after."""
        sides: list[tuple[str, ...]] = []
        words = 0
        for step, first in ((-1, end - 1), (1, start)):
            taken: list[str] = []
            j = first
            while len(taken) < NEGATION_CONTEXT:
                t = tokens[j] if 0 <= j < len(tokens) else "."
                if not t[0].isalnum():
                    break
                taken.append(t)
                j += step
            if not taken:
                return None
            words += len(taken)
            if len(taken) < NEGATION_CONTEXT:
                taken.append(".")
            sides.append(tuple(reversed(taken)) if step < 0 else tuple(taken))
        if words <= NEGATION_CONTEXT or all(t in _OBJECT_FILLER for t in sides[1] if t[0].isalnum()):
            return None
        return sides[0], sides[1]

    def written(context: Context, middle: str = "") -> str:
        return " ".join(t for t in (*context[0], middle, *context[1]) if t and t[0].isalnum())

    asked = _asked(evidence)
    answer_words = set(answer)
    # the words around each negation the evidence states, and the same words with no negation, or
    # another word, between; each with the word between ("" for none), written out only if reported
    negated: dict[Context, str] = {}
    affirmed: dict[Context, str] = {}
    for i, token in enumerate(evidence):
        if not i or evidence[i - 1] not in answer_words:
            continue  # every context ends, on the left, with the word before i: no answer's can match
        replaced = around(evidence, i, i + 1)
        if replaced is not None and token in _NEGATORS:
            negated.setdefault(replaced, token)
        elif replaced is not None and not asked[i]:
            affirmed.setdefault(replaced, token)
        joined = around(evidence, i, i)
        if joined is not None and not asked[i] and not asked[i - 1]:
            affirmed.setdefault(joined, "")
    flips: list[str] = []
    answer_asked = _asked(answer, _WHETHER)
    for i, token in enumerate(answer):
        if answer_asked[i]:
            continue  # the answer asks it too ("we assessed whether statins are associated with ..."): no claim
        replaced = around(answer, i, i + 1)  # a word between two contexts: a negation added, or one replaced
        if replaced is not None:
            if token in _NEGATORS and replaced in affirmed and replaced not in negated:
                flips.append(f"{written(replaced, token)} (the evidence: {written(replaced, affirmed[replaced])})")
            elif token not in _NEGATORS and replaced in negated and replaced not in affirmed:
                flips.append(f"{written(replaced, token)} (the evidence: {written(replaced, negated[replaced])})")
        joined = around(answer, i, i)  # two contexts side by side: a negation left out
        if joined is not None and joined in negated and joined not in affirmed:
            flips.append(f"{written(joined)} (the evidence: {written(joined, negated[joined])})")
    return list(dict.fromkeys(flips))


_COMPARATIVES = frozenset("""more less fewer better worse higher lower greater smaller larger bigger longer shorter
    faster slower earlier later older younger stronger weaker wider narrower heavier lighter safer riskier cheaper""".split())
_CHANGED_COMPARED = frozenset("increased elevated decreased reduced lowered improved worsened".split())
"""Changes that compare when a link follows them ("reduced in A compared with B", "increased risk
relative to B"), never with "than"."""
_SENSES = {**dict.fromkeys("more higher greater larger bigger increased elevated exceed surpass".split(), "more"),
           **dict.fromkeys("less fewer lower smaller decreased reduced lowered".split(), "less"),
           **dict.fromkeys("improved superior outperform".split(), "better"),
           **dict.fromkeys("worsened inferior".split(), "worse")}
"""Comparatives that say the same thing of a comparison: "greater in men than in women" is "higher in
men than in women", "reduced in A compared with B" is "lower in A than in B", "surgery outperformed
physiotherapy" is "surgery performed better than physiotherapy"; the others are their own sense."""
_OPPOSITES = [("more", "less"), ("better", "worse"), ("longer", "shorter"), ("faster", "slower"),
              ("earlier", "later"), ("older", "younger"), ("stronger", "weaker"), ("wider", "narrower"),
              ("heavier", "lighter"), ("safer", "riskier")]
_OPPOSITE_SENSE = {b: a for a, b in _OPPOSITES} | {a: b for a, b in _OPPOSITES}


def _sense(how: str) -> str:
    return _SENSES.get(how, how)


_RANKING_VERBS = {"outperformed": "outperform", "outperforms": "outperform", "outperform": "outperform",
                  "exceeded": "exceed", "exceeds": "exceed", "exceed": "exceed", "surpassed": "surpass",
                  "surpasses": "surpass", "superior": "superior", "inferior": "inferior"}
_CLAUSE_BREAKS = frozenset("but whereas while although though however".split())
_LINKS = {("compared", "with"): 2, ("compared", "to"): 2, ("relative", "to"): 2, ("comparison", "with"): 2,
          ("comparison", "to"): 2}
"""Two-word links that compare like "than" does, when a comparative (or a change) stands before them;
"versus" and "vs" are one word."""
_VERSUS = frozenset("versus vs".split())


def _link(tokens: list[str], i: int) -> int:
    """How many words the link starting at tokens[i] has ("than", "versus": 1; "compared with",
    "relative to": 2), 0 for none."""
    t = tokens[i]
    if t == "than" or t in _VERSUS:
        return 1
    return _LINKS.get((t, tokens[i + 1]), 0) if i + 1 < len(tokens) else 0


COMPARED_WORDS = 3
"""Content words either side of a comparison taken as what it compares: "mortality was higher in men
than in women" compares (mortality, men) with (women, two, years)."""
COMPARED_SPAN = 10
"""Words looked at either side for them (fillers and short words are skipped, so without a bound a
text of "than the the the ..." was read to its start from every "than": quadratic)."""


Comparison = tuple[str, list[str], list[str]]


_LINKED_WORDS = _COMPARATIVES | _CHANGED_COMPARED
"""What may stand before a link other than "than" ("lower ... compared with", "reduced ... versus")."""
_SIDE_SKIP = (_OBJECT_FILLER | _AUXILIARIES | _STOPWORDS | _PREPOSITIONS | _COMPARATIVES | _CHANGED_COMPARED
              | _NEGATORS | _VERSUS)
"""Words that are no side of a comparison."""


def _content(tokens: list[str], indices: Iterable[int]) -> list[str]:
    """The first COMPARED_WORDS words at `indices` that can be a side, up to the clause's end."""
    out: list[str] = []
    for j in indices:
        t = tokens[j]
        if not t[0].isalnum() or t in _CLAUSE_BREAKS:
            break
        if t not in _SIDE_SKIP and not _is_figure(t) and len(t) > 1:
            out.append(t)
            if len(out) == COMPARED_WORDS:
                break
    return out


def _compared(how: str, first: list[str], second: list[str]) -> Comparison | None:
    """The comparison of two sides without the words both have ("a level III center than a level I
    center" compares III with I, not center); None when a side is left empty."""
    shared = set(first) & set(second)
    first, second = [w for w in first if w not in shared], [w for w in second if w not in shared]
    return (how, first, second) if first and second else None


_LEADING_LINK = re.compile(r"\b(?:compared|relative)\s+(?:with|to)\s+([^,.;:!?]{1,120}),([^.;:!?]{1,400})", re.IGNORECASE)
LEADING_WORDS = 10
"""How far into the clause after "compared with X," its comparative may stand: "Compared with
chloroquine, mefloquine users had a significantly higher risk"."""


def _leading_comparisons(text: str) -> list[Comparison]:
    """Comparisons whose link comes first: "compared with men, women had higher mortality" gives
    ("higher", [women], [men]); each side read from its start. Read only where nothing before the
    link in its clause is a comparative ("mortality was higher compared with men, ..." is the "than"
    reading's)."""
    found: list[Comparison] = []
    words = _LINKED_WORDS
    for m in _LEADING_LINK.finditer(text):
        before = _clause_tokens(text[max(0, m.start() - 200):m.start()])
        ends = [k for k, t in enumerate(before) if not t[0].isalnum()]
        if any(t in words for t in before[ends[-1] + 1 if ends else 0:]):
            continue
        main = _clause_tokens(m.group(2))
        at = next((j for j, t in enumerate(main[:LEADING_WORDS]) if t in words or not t[0].isalnum()), None)
        if at is None or main[at] not in words:
            continue
        other = _clause_tokens(m.group(1))
        # the clause's first words are what it says is compared: "mefloquine users had ... higher"
        compared = _compared(main[at], _content(main, range(at)), _content(other, range(len(other))))
        if compared is not None:
            found.append(compared)
    return found


@lru_cache(maxsize=8)
def _comparisons(text: str) -> tuple[Comparison, ...]:
    """(how, first side, second side) for every comparison a text states: "higher in men than in
    women" gives ("higher", [men], [women]), "lower in IMA samples compared with VG" ("lower",
    [samples, ima], [vg]), "statins were superior to placebo" ("superior", [statins], [placebo]),
    "surgery outperformed physiotherapy" ("outperform", [surgery], [physiotherapy]); each side the
    COMPARED_WORDS content words next to it in its clause, the nearest first. What is compared is no
    side ("the drug was more effective than aspirin": not "effective"), nor is a word both sides have
    ("a level III center than a level I center": not "center"). A link other than "than" compares
    only after a comparative or a change word, or before its sides: "compared with men, women had
    higher mortality" (_leading_comparisons). Cached: the comparison and direction checks read the
    same texts."""
    tokens = _clause_tokens(text)
    found: list[Comparison] = _leading_comparisons(text)
    for i, t in enumerate(tokens):
        before: Iterable[int] = range(i - 1, max(-1, i - 1 - COMPARED_SPAN), -1)
        link = _link(tokens, i)
        if link:  # the comparative word may stand a few words before: "higher in patients with X than"
            words = _COMPARATIVES if t == "than" else _LINKED_WORDS
            at = None
            for j in range(i - 1, max(-1, i - 7), -1):
                if not tokens[j][0].isalnum():
                    break  # "... was higher. Compared with men, women": the comparative is another clause's
                if tokens[j] in words:
                    at = j
                    break
            how = tokens[at] if at is not None else None
            if at is not None:
                # what is compared, up to a preposition: "more effective than", "higher risk of death in men than"
                quality = at + 1
                while quality < i and (tokens[quality] == "of" or tokens[quality] not in _PREPOSITIONS):
                    quality += 1
                before = [j for j in before if not at < j < quality]
        else:
            how = _RANKING_VERBS.get(t)
        if how is None:
            continue
        if link:
            after = i + link
        else:
            after = i + 2 if how in ("superior", "inferior") and i + 1 < len(tokens) and tokens[i + 1] == "to" else i + 1
        if after < len(tokens) and _is_figure(tokens[after]):
            continue  # "more than 40 degrees", "exceeded 10%": a bound, not two things compared
        compared = _compared(how, _content(tokens, before),
                             _content(tokens, range(after, min(len(tokens), after + COMPARED_SPAN))))
        if compared is not None:
            found.append(compared)
    return tuple(found)


READINGS_PER_PAIR = 32
"""Comparisons of the evidence kept per pair of words it compares (the first ones): enough for any
abstract, and a bound on the work per claim (a text that compares the same two words thousands of
times made every claim about them read all of those comparisons: quadratic)."""

_ByPair = dict[tuple[str, str], list[tuple[str, frozenset[str], frozenset[str]]]]


@lru_cache(maxsize=8)
def _by_pair(text: str) -> _ByPair:
    """The text's comparisons by each pair of words they compare (a word of the first side, one of
    the second), each comparison once: what a claim about that pair is judged by."""
    index: _ByPair = {}
    for how, first, second in dict.fromkeys((how, tuple(first), tuple(second)) for how, first, second in _comparisons(text)):
        comparison = (how, frozenset(first), frozenset(second))
        for a in comparison[1]:
            for b in comparison[2]:
                kept = index.setdefault((a, b), [])
                if len(kept) < READINGS_PER_PAIR:
                    kept.append(comparison)
    return index


def _readings(claim: Comparison, evidence: _ByPair) -> list[tuple[bool, str, str, str]]:
    """How the evidence's comparisons closest to the claim read it: (agrees, the evidence's
    comparative, its first and its second word of the pair) for each comparison that holds a pair of
    the claim's words, one per side, with its sense or the opposite one, and that shares the most of
    the claim's words. The pair is the nearest words that any comparison of the evidence holds: "men
    waited longer than women" is about men and women, not "waited" (the word next to "longer"). An
    abstract that compares two groups both ways ("density was higher in patients than in control
    subjects", "the increase in HR was lower in patients compared with control subjects") is read by
    the comparison about what the claim is about."""
    how, first, second = claim
    sense = _sense(how)
    opposite, words = _OPPOSITE_SENSE.get(sense, ""), {*first, *second}
    for a in first:
        for b in second:
            readings: list[tuple[int, bool, str, str, str]] = []
            for pair, in_order in (((a, b), True), ((b, a), False)):
                for their_how, their_first, their_second in evidence.get(pair, ()):
                    their_sense = _sense(their_how)
                    if their_sense in (sense, opposite):
                        agrees = in_order == (their_sense == sense)  # the same word in the same order, or the opposite turned round
                        readings.append((len(words & (their_first | their_second)), agrees, their_how, *pair))
            if readings:
                best = max(r[0] for r in readings)
                return [r[1:] for r in readings if r[0] == best]
    return []


def swapped_comparisons(output: str, retrieved: str) -> list[str]:
    """Comparisons the answer states the other way round from the evidence: "placebo was superior to
    statins" where the evidence says statins were superior to placebo, "mortality was higher in
    women than in men" for "higher in men than in women" (or "greater"), or the same order with the
    opposite word ("lower in men than in women"). Word-level support cannot see it: every word is the
    evidence's. An answer's comparison is judged by the words next to it ("women" and "men" in
    "mortality was lower in women than in men at two years"; "mortality" and "years" are what it is
    about), the evidence's by any of its words, against the evidence's comparisons of that pair that
    share most of its words (_readings); said from its other side with the opposite word it is the
    evidence's claim."""
    def said(how: str, a: str, b: str) -> str:
        if how in ("superior", "inferior"):
            return f"{a} {how} to {b}"
        if how in _COMPARATIVES:
            return f"{a} {how} than {b}"
        if how in _CHANGED_COMPARED:
            return f"{a} {how} compared with {b}"
        return f"{a} {how}s {b}"  # outperform, exceed, surpass

    evidence = _by_pair(retrieved)
    turned = []
    for claim in _comparisons(output) if evidence else ():
        readings = _readings(claim, evidence)
        if readings and not any(agrees for agrees, *_ in readings):
            how, first, second = claim
            _, their_how, x, y = readings[0]
            a, b = (x, y) if x in first else (y, x)
            turned.append(f"{said(how, a, b)} (the evidence: {said(their_how, x, y)})")
    return list(dict.fromkeys(turned))


def converse_comparatives(output: str, retrieved: str) -> set[str]:
    """The comparatives of the answer's comparisons that state one of the evidence's from its other
    side: "aspirin was less effective than the drug" for "the drug was more effective than aspirin".
    Their "less" is no change turned round (reversed_directions leaves it to the comparison check)."""
    evidence = _by_pair(retrieved)
    return {claim[0] for claim in _comparisons(output) if evidence
            and any(agrees and _sense(their_how) != _sense(claim[0]) for agrees, their_how, *_ in _readings(claim, evidence))}
