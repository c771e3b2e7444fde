"""The validation gate is a pure function: each check's verdict and reason, thresholds from settings."""

from __future__ import annotations

import pytest

from distill.config import GateSettings
from distill.records.replay import ContextBundle, RetrievedItem
from runtime.gate import cited_ids, cited_paths, figures_in, identifiers_in, unit_mismatches, validate
from runtime.prompt import make_nonce, render

BUNDLE = ContextBundle(
    exemplars=[
        RetrievedItem(
            id="rag-0123456789abcdef",
            score=0.9,
            rank=1,
            category="accepted",
            source_run_id="run-0001",
            title="Provider routing",
            text="Routing lives in crates/gateway/src/main.rs and uses ProviderAdapter.",
            source_files=["crates/gateway/src/main.rs", "crates/gateway/src/router.rs"],
        )
    ],
    validation_steps=[
        "Verify the router falls back to openrouter when the primary provider times out",
        "Check that every request carries the provider header",
    ],
)
TASK = "Audit provider routing in the gateway"
GOOD = (
    "Routing is implemented in crates/gateway/src/main.rs (ProviderAdapter, rag-0123456789abcdef). The router falls back "
    "to openrouter when the primary provider times out and each request carries the provider header."
)


def checks(result):
    return {c.name: c for c in result.checks}


def assert_check(check: str, bundle: ContextBundle, task: str, honest: list[str], failing: list[tuple[str, str]],
                 because: str = "") -> None:
    """Every honest answer passes `check`; every failing one fails it, with its reason naming what it
    should (and `because`, the kind of problem, when given)."""
    for answer in honest:
        result = checks(validate(answer, bundle, task, GateSettings()))[check]
        assert result.passed, (answer, result.reason)
    for answer, named in failing:
        result = checks(validate(answer, bundle, task, GateSettings()))[check]
        assert not result.passed and named in result.reason and because in result.reason, (answer, result.reason)


def assert_support(bundle: ContextBundle, task: str, honest: list[str], failing: list[tuple[str, str]],
                   because: str = "") -> None:
    assert_check("support", bundle, task, honest, failing, because)


def test_grounded_answer_passes_every_check() -> None:
    result = validate(GOOD, BUNDLE, TASK, GateSettings())
    assert result.passed, result
    assert [c.name for c in result.checks] == [
        "non_empty", "length", "hedging", "placeholders", "checklist_overlap", "grounding", "echo", "prompt_markup",
        "citations", "answer_form", "support",
    ]
    assert all(c.reason for c in result.checks)
    assert "appear in the bundle" in checks(result)["grounding"].reason


def test_empty_and_length_bounds() -> None:
    empty = checks(validate("   ", BUNDLE, TASK, GateSettings()))
    assert not empty["non_empty"].passed and empty["non_empty"].reason == "the answer is empty"
    short = checks(validate("Fine.", BUNDLE, TASK, GateSettings()))
    assert not short["length"].passed and "below the minimum 40" in short["length"].reason
    long = checks(validate(GOOD, BUNDLE, TASK, GateSettings(max_chars=50)))
    assert not long["length"].passed and "above the maximum 50" in long["length"].reason


@pytest.mark.parametrize("phrase", ["I'm not sure", "It might be", "As an AI", "hard to say"])
def test_hedging_phrases_fail(phrase: str) -> None:
    result = validate(f"{phrase} whether {GOOD}", BUNDLE, TASK, GateSettings())
    assert not result.passed
    c = checks(result)["hedging"]
    assert not c.passed and phrase.lower().split()[-1] in c.reason.lower()


def test_hedging_needs_word_boundaries() -> None:
    # "mightily" contains "might" but is not the phrase "might be"
    assert checks(validate("The team worked mightily. " + GOOD, BUNDLE, TASK, GateSettings()))["hedging"].passed


@pytest.mark.parametrize(
    "snippet",
    ["TODO: fill in the fallback", "fn route() { todo!() }", "unimplemented!()", "This is not implemented yet",
     "Lorem ipsum dolor sit amet", "raise NotImplementedError", "see <insert path here>", "FIXME later"],
)
def test_placeholders_fail(snippet: str) -> None:
    result = validate(f"{GOOD}\n{snippet}", BUNDLE, TASK, GateSettings())
    c = checks(result)["placeholders"]
    assert not c.passed and "placeholder patterns" in c.reason
    assert not result.passed


def test_placeholder_patterns_are_configurable() -> None:
    text = GOOD + " Marked QQQ for follow-up."
    assert checks(validate(text, BUNDLE, TASK, GateSettings()))["placeholders"].passed
    custom = GateSettings(placeholder_patterns=[r"\bQQQ\b"])
    assert not checks(validate(text, BUNDLE, TASK, custom))["placeholders"].passed


@pytest.mark.parametrize("filler", ["XXX fill in the fix later.", "Patch: TBD.", "Validation: (to be written)"])
def test_default_placeholders_cover_common_fillers(filler: str) -> None:
    assert not checks(validate(GOOD + " " + filler, BUNDLE, TASK, GateSettings()))["placeholders"].passed


@pytest.mark.parametrize("hedge", ["I think the retry path is wrong.", "Perhaps the timeout is missing."])
def test_default_hedges_cover_first_person_guesses(hedge: str) -> None:
    assert not checks(validate(GOOD + " " + hedge, BUNDLE, TASK, GateSettings()))["hedging"].passed


def test_checklist_overlap_threshold() -> None:
    off_topic = "The deployment uses blue green rollouts with automated canary analysis and rollback on errors."
    c = checks(validate(off_topic, BUNDLE, TASK, GateSettings()))["checklist_overlap"]
    assert not c.passed and "need 0.20" in c.reason and "missing e.g." in c.reason
    assert checks(validate(off_topic, BUNDLE, TASK, GateSettings(min_checklist_overlap=0.0)))["checklist_overlap"].passed


def test_checklist_skipped_with_pass_when_bundle_has_no_steps() -> None:
    c = checks(validate(GOOD, ContextBundle(), TASK, GateSettings()))["checklist_overlap"]
    assert c.passed and c.reason.startswith("skipped")


def test_ungrounded_path_and_id_fail_with_names() -> None:
    text = GOOD + " The fix belongs in src/providers/fallback.py, see record rag-ffffffffffffffff."
    c = checks(validate(text, BUNDLE, TASK, GateSettings()))["grounding"]
    assert not c.passed
    assert "src/providers/fallback.py" in c.reason and "rag-ffffffffffffffff" in c.reason


def test_grounding_accepts_task_paths_line_suffixes_and_suffix_matches() -> None:
    text = "Look at crates/gateway/src/main.rs:42-50 and src/router.rs; the task names config/app.toml. " + GOOD
    c = checks(validate(text, BUNDLE, TASK + " (see config/app.toml)", GateSettings()))["grounding"]
    assert c.passed, c.reason


def test_without_retrieval_any_cited_path_is_ungrounded() -> None:
    text = "The routing table in gateway/routing_table.py holds placeholder codes P99999 and falls back as expected."
    c = checks(validate(text, ContextBundle(), TASK, GateSettings()))["grounding"]
    assert not c.passed and "gateway/routing_table.py" in c.reason


def test_require_citation() -> None:
    plain = "The router falls back to openrouter when the primary provider times out; every request carries the header."
    assert checks(validate(plain, BUNDLE, TASK, GateSettings()))["grounding"].passed
    c = checks(validate(plain, BUNDLE, TASK, GateSettings(require_citation=True)))["grounding"]
    assert not c.passed and "citations required" in c.reason


def test_citation_extraction_ignores_urls_and_prose() -> None:
    text = "See https://example.com/docs/page.html and and/or 3.5 e.g. notes; edit ./src/app.py:10 and README.md."
    assert cited_paths(text) == ["src/app.py", "README.md"]
    assert cited_ids("ids rag-0123456789abcdef and 123e4567-e89b-12d3-a456-426614174000, not rag-12") == [
        "rag-0123456789abcdef",
        "123e4567-e89b-12d3-a456-426614174000",
    ]


def test_gate_is_pure_and_deterministic() -> None:
    a = validate(GOOD, BUNDLE, TASK, GateSettings())
    b = validate(GOOD, BUNDLE, TASK, GateSettings())
    assert a == b


def _prompt_echo(task: str, bundle: ContextBundle, which: int) -> str:
    """What the packaged 270M model did: repeat (the start of) one of its prompt messages."""
    messages = render(task, bundle, make_nonce(task, bundle))
    return (messages[0] if which == 0 else messages[-1])["content"][:400]


@pytest.mark.parametrize(("bundle", "which"), [(BUNDLE, 0), (ContextBundle(), 0), (ContextBundle(), 1)],
                         ids=["system-with-bundle", "system-no-bundle", "user-no-bundle"])
def test_prompt_echo_fails_with_the_echoed_fraction(bundle: ContextBundle, which: int) -> None:
    answer = _prompt_echo(TASK, bundle, which)
    result = validate(answer, bundle, TASK, GateSettings())
    c = checks(result)["echo"]
    assert not result.passed and not c.passed
    assert "repeat the task or the prompt's instructions (max 50%)" in c.reason
    echoed, total = (int(x) for x in c.reason.split(" word ")[0].split("/"))
    assert total >= 10 and echoed / total > 0.9


def test_echo_without_a_checklist_is_caught_by_the_echo_checks_only() -> None:
    # the case the benchmarks found: no validation steps, so only the echo checks (verbatim
    # n-grams, and the prompt's own tags it reproduces) catch it
    answer = _prompt_echo(TASK, ContextBundle(), 0)
    result = validate(answer, ContextBundle(), TASK, GateSettings())
    failed = [c.name for c in result.checks if not c.passed]
    assert "echo" in failed and not {"length", "hedging", "placeholders", "grounding"} & set(failed)


def test_quoting_retrieved_text_that_the_task_also_contains_is_not_echo() -> None:
    step = BUNDLE.validation_steps[0]
    task = f"Audit provider routing in the gateway. {step}."
    answer = (
        f"Checked against the accepted run rag-0123456789abcdef. {step}: yes. "
        "Routing lives in crates/gateway/src/main.rs and uses ProviderAdapter. "
        f"{BUNDLE.validation_steps[1]}: it does, in crates/gateway/src/router.rs."
    )
    result = validate(answer, BUNDLE, task, GateSettings())
    assert result.passed, result
    assert checks(result)["echo"].reason.startswith("0/")
    # the same words with nothing retrieved behind them are a copy of the task
    bare = validate(answer, ContextBundle(validation_steps=[]), task, GateSettings())
    assert not checks(bare)["echo"].reason.startswith("0/")


def test_restating_the_task_in_one_clause_then_answering_passes() -> None:
    answer = "Audit provider routing in the gateway: " + GOOD
    result = validate(answer, BUNDLE, TASK, GateSettings())
    assert result.passed, result
    c = checks(result)["echo"]
    assert not c.reason.startswith("0/")  # the restatement is counted, just not enough to fail
    strict = checks(validate(answer, BUNDLE, TASK, GateSettings(max_echo_fraction=0.0)))["echo"]
    assert not strict.passed


def test_echo_ngram_length_and_short_answers() -> None:
    c = checks(validate("Audit provider routing now", BUNDLE, TASK, GateSettings()))["echo"]
    assert c.passed and c.reason == "skipped: the answer has fewer than 6 words"
    c = checks(validate(GOOD, BUNDLE, TASK, GateSettings(echo_ngram=3)))["echo"]
    assert c.passed and "word 3-grams" in c.reason


def test_replayed_prompt_markup_fails_even_when_paraphrased() -> None:
    # What the packaged 270M model really produced (benchmarks/results/escalation.json): loose
    # enough that the 6-gram echo check passes it.
    answer = (
        "You are a software engineer. Answer the task given in the <task> block.\n\n<task>\n<task>\n"
        "<task>\n<task>\n<task>\n<task>\n<task>\n<task"
    )
    result = validate(answer, ContextBundle(), TASK, GateSettings())
    c = checks(result)["prompt_markup"]
    assert not c.passed and "'task'" in c.reason
    assert not result.passed


def test_code_with_angle_brackets_is_not_prompt_markup() -> None:
    answer = GOOD + "\nIn C++ this is `#include <system_error>`, `std::vector<Task>` and `Map<String, Task>`."
    assert checks(validate(answer, BUNDLE, TASK, GateSettings()))["prompt_markup"].passed


# ------------------------------------------------------------------------------------------ support

TRIAL = ContextBundle(
    exemplars=[
        RetrievedItem(
            id="pubmed:1", score=1.0, rank=1, category="accepted",
            text="In a randomised trial of 412 patients, statin therapy reduced 30-day mortality by 18% (p=0.02) "
                 "compared with placebo; adverse events were similar in both arms.",
        )
    ]
)
TRIAL_TASK = "Does statin therapy reduce 30-day mortality?"


def test_an_answer_drawn_from_the_evidence_is_supported() -> None:
    answer = "Yes. Statin therapy reduced 30-day mortality by 18% (p=0.02) in a randomised trial of 412 patients."
    result = checks(validate(answer, TRIAL, TRIAL_TASK, GateSettings()))
    assert result["support"].passed, result["support"].reason


def test_changed_figures_fail_support_with_the_figures_named() -> None:
    answer = "Yes. Statin therapy reduced 30-day mortality by 35% (p=0.001) in a randomised trial of 2,300 patients."
    support = checks(validate(answer, TRIAL, TRIAL_TASK, GateSettings()))["support"]
    assert not support.passed
    assert "'35%'" in support.reason and "'0.001'" in support.reason and "'2,300'" in support.reason  # as written


def abstract(pmid: int, text: str) -> ContextBundle:
    """A bundle of one accepted PubMed abstract, as the escalation suite retrieves it."""
    return ContextBundle(exemplars=[RetrievedItem(id=f"pubmed:{pmid}", score=1.0, rank=1, category="accepted", text=text)])


def one_item(n: int, title: str, text: str) -> ContextBundle:
    """A bundle of one accepted exemplar."""
    return ContextBundle(exemplars=[RetrievedItem(id=f"rag-{n:016x}", score=0.9, rank=1, category="accepted",
                                                  source_run_id=f"run-{n:04d}", title=title, text=text)])


POLICY = one_item(0xAA, "Retry policy",
                  "The retry policy trains with a learning rate of 1e-4, pins lodash to v4.17.21 and waits 30 seconds. "
                  "Thirty-two workers run on H100 GPUs since 2026-01-15 (commit 3f2a9c1e, error code 0x1F4).")
POLICY_TASK = "Which settings does the retry policy use?"


def test_figures_in_every_notation_count_and_are_compared_by_value() -> None:
    """3e-4 for 1e-4, v4.17.99 for v4.17.21, H200 for H100, a changed hash, date or hex code, and
    a figure written in words: each is a figure the evidence does not hold. The same values in
    another notation (0.0001, 4.17.21, "thirty seconds", 32) are the evidence's own."""
    honest = ("The retry policy uses a learning rate of 0.0001, lodash 4.17.21 and a thirty second wait, with 32 "
              "workers on H100 GPUs since 2026-01-15 (commit 3f2a9c1e, code 0x1f4).")
    support = checks(validate(honest, POLICY, POLICY_TASK, GateSettings()))["support"]
    assert support.passed, support.reason
    for invented, named in [
        ("The retry policy uses a learning rate of 3e-4.", "3e-4"),
        ("The retry policy pins lodash to v4.17.99.", "v4.17.99"),
        ("The retry policy runs its workers on H200 GPUs.", "H200"),
        ("The retry policy changed in commit 9b1d77e0.", "9b1d77e0"),
        ("The retry policy has been in place since 2026-01-16.", "2026-01-16"),
        ("The retry policy fails with error code 0x1F5.", "0x1F5"),
        ("The retry policy waits ninety seconds between attempts.", "90 seconds"),
        ("The retry policy runs two hundred and twelve workers.", "212"),
    ]:
        support = checks(validate(invented, POLICY, POLICY_TASK, GateSettings()))["support"]
        assert not support.passed and f"'{named}'" in support.reason, (invented, support.reason)


def test_a_figure_moved_to_another_unit_fails_support() -> None:
    """The evidence waits 30 seconds: "30 ms", "30 minutes" or "a thirty-day wait" keep its number
    and change what it says. The same unit spelled another way (30 s, 30 secs, thirty seconds) is
    the evidence's; a figure the evidence states without a unit is left to the figure check."""
    for same in ["The retry policy waits 30 s.", "The retry policy waits 30 secs.", "The retry policy waits thirty seconds."]:
        support = checks(validate(same, POLICY, POLICY_TASK, GateSettings()))["support"]
        assert support.passed, (same, support.reason)
    for moved, named in [("The retry policy waits 30 ms.", "30 ms"), ("The retry policy waits 30 minutes.", "30 minutes"),
                         ("The retry policy has a thirty-day wait.", "30 day")]:
        support = checks(validate(moved, POLICY, POLICY_TASK, GateSettings()))["support"]
        assert not support.passed and f"'{named} (the evidence has 30 s)'" in support.reason, (moved, support.reason)
    assert unit_mismatches("Dose 5 g, 64 GB.", "Dose 5 mg; it holds 64 MiB, and 64 more.") == [
        "5 g (the evidence has 5 mg)", "64 GB (the evidence has 64 MB)"]
    assert unit_mismatches("It holds 64 GB.", "It holds 64 rows.") == []  # no unit to compare with


DEPLOY = one_item(0xBB, "Key rotation",
                  "Rotate the signing key with keyctl, then restart the gateway: about 3-5 minutes, $5 of compute. "
                  "The handler is src/cache.rs:110. Runbook: https://docs.example.com/keys/rotation (owner "
                  "ops@corp.example.com), mirror at www.keys.example.org.")
DEPLOY_TASK = "How is the signing key rotated?"
DEPLOY_ANSWER = "Rotate the signing key with keyctl and restart the gateway"


def test_links_the_evidence_does_not_hold_fail_grounding() -> None:
    """A URL or an e-mail address names a page or a contact as a path names a file: one the
    evidence does not hold is invented (the gate passed "See https://evil.example.net/steal").
    The evidence's own links pass however they are punctuated, with or without scheme or "www.",
    and so does a site or folder above a page it links; a page under its site, or a look-alike
    host, does not."""
    for given in ["(see https://docs.example.com/keys/rotation).", "[the runbook](https://docs.example.com/keys/rotation/)",
                  "<http://docs.example.com/keys>", "https://keys.example.org, or mail OPS@corp.example.com."]:
        grounding = checks(validate(f"{DEPLOY_ANSWER} {given}", DEPLOY, DEPLOY_TASK, GateSettings()))["grounding"]
        assert grounding.passed, (given, grounding.reason)
    for invented in ["https://evil.example.net/steal", "https://docs.example.com/keys/rotation-v2",
                     "https://docs.example.com/keys/other", "https://evil-docs.example.com/keys/rotation",
                     "admin@corp.example.com", "s3://corp-keys/backup"]:
        grounding = checks(validate(f"{DEPLOY_ANSWER}; see {invented}.", DEPLOY, DEPLOY_TASK, GateSettings()))["grounding"]
        assert not grounding.passed and f"links not in the bundle or task: '{invented}'" in grounding.reason, (
            invented, grounding.reason)
    # code is no address: `x@w.T` (a matrix product) and a decorator
    grounding = checks(validate(f"{DEPLOY_ANSWER}; `y = x@w.T` under @pytest.mark.slow.", DEPLOY, DEPLOY_TASK,
                                GateSettings()))["grounding"]
    assert grounding.passed, grounding.reason


def test_small_figures_with_a_unit_or_currency_and_line_numbers_are_figures() -> None:
    """A bare small number is a count ("two steps") and is not checked, but "6 minutes", "$6" and a
    line after a path ("src/cache.rs:120") are measurements: the gate passed all three changed."""
    honest = f"{DEPLOY_ANSWER}: about 3-5 minutes and $5 of compute, in src/cache.rs:110, in two steps."
    support = checks(validate(honest, DEPLOY, DEPLOY_TASK, GateSettings()))["support"]
    assert support.passed, support.reason
    for invented, named in [(f"{DEPLOY_ANSWER}: it takes 3-6 minutes.", "6"), (f"{DEPLOY_ANSWER}: it costs $6.", "6"),
                            (f"{DEPLOY_ANSWER}; the handler is src/cache.rs:120.", "src/cache.rs:120")]:
        support = checks(validate(invented, DEPLOY, DEPLOY_TASK, GateSettings()))["support"]
        assert not support.passed and f"'{named}'" in support.reason, (invented, support.reason)


def test_a_small_number_in_words_before_a_unit_is_a_figure() -> None:
    """text2num leaves numbers up to ten as words, so "six minutes" and "a five-year run" were counts
    and never checked: the gate passed an answer that turned 3-5 minutes into six. Before a unit they
    are measurements; the last word of a larger number ("thirty-one days") is still read whole."""
    assert figures_in("in two minutes, a five-year run, one of the ten workers, two steps") == ["2", "5"]
    assert figures_in("thirty-one days and a hundred and five days") == ["31", "105"]
    honest = f"{DEPLOY_ANSWER}: it takes three to five minutes."
    support = checks(validate(honest, DEPLOY, DEPLOY_TASK, GateSettings()))["support"]
    assert support.passed, support.reason
    support = checks(validate(f"{DEPLOY_ANSWER}: it takes six minutes.", DEPLOY, DEPLOY_TASK, GateSettings()))["support"]
    assert not support.passed and "'6 minutes'" in support.reason, support.reason


def test_a_name_with_another_number_than_the_evidence_gives_it_fails_support() -> None:
    """"gpt-5" where the evidence names gpt-4o passed: the 5 after the hyphen is a small count to the
    figure check, and "gpt" is a word the evidence holds. A name the evidence numbers must keep one
    of its numbers; writing it another way ("Phase 3", "phase-3") or less precisely ("python-3" for
    Python 3.11) is fine, as is code (`retries-1` is a sum) and a name the evidence never numbers."""
    models = one_item(0xEE, "Agents", "The agent ran on GPT-4o in a phase 3 trial; it needs Python 3.11 and "
                                      "retries 3 times.")
    assert_support(models, "Which model did the agent run on?",
                   ["The agent ran on gpt-4o in a phase-3 trial with python-3.",
                    "The agent ran on GPT-4o; it stops after\n```\nleft = retries-1\n```"],
                   [("The agent ran on gpt-5 in a phase 3 trial.", "'gpt-5 (the evidence has GPT-4o)'"),
                    ("The agent ran on GPT-4o in a phase-2 trial.", "'phase-2 (the evidence has phase 3)'"),
                    ("The agent ran on GPT-4o and needs python-2.", "'python-2 (the evidence has Python 3.11)'")],
                   because="names with another number")


def test_digits_of_any_script_and_si_digit_groups_are_read_by_value() -> None:
    """Full-width and Arabic-Indic digits, a no-break space before "%" and SI digit groups ("12 345"
    with a thin or no-break space) were figures of their own: "３０ seconds" failed against the
    evidence's 30 seconds, and "1 000 workers" was read as the counts 1 and 000, never checked."""
    assert figures_in("waits ３０ s, or ٣٠ s, at 30\u00a0%, for 12\u2009345 rows and 1\u202f000 workers") == [
        "30", "30%", "12345", "1000"]
    assert figures_in("1 000 rows") == []  # a plain space between numbers: two numbers (both counts)
    support = checks(validate("The retry policy waits ３０ seconds.", POLICY, POLICY_TASK, GateSettings()))["support"]
    assert support.passed, support.reason
    support = checks(validate("The retry policy runs 1\u202f000 workers.", POLICY, POLICY_TASK, GateSettings()))["support"]
    assert not support.passed and repr("1\u202f000") in support.reason, support.reason  # quoted as written


def test_a_comma_groups_thousands_only() -> None:
    """"1,2,3", "10,20" and a diff hunk's "-120,7" were read as the numbers 123, 1020 and -1207, which
    no evidence states: a comma joins digits only before a group of three (2,300; 1,234,567)."""
    assert figures_in("Steps 1,2,3; sizes 10,20; 2,300 rows of 1,234,567; 2,5 mg") == ["20", "2300", "1234567"]
    hunk = one_item(0xCC, "TTL", "The handler in src/cache.rs sets the ttl to 30 in lines 120 to 127.")
    patch = "--- a/src/cache.rs\n+++ b/src/cache.rs\n@@ -120,7 +120,8 @@\n-    let ttl = 30;\n"
    support = checks(validate(patch, hunk, "Where is the ttl set?", GateSettings()))["support"]
    assert support.passed, support.reason


STATINS = one_item(0xDD, "Statins", "In 120 patients, statins reduced 30-day mortality from 12% to 8% and raised "
                                    "HDL cholesterol; adverse events were rare.")
STATINS_TASK = "Do statins reduce 30-day mortality? Answer yes, no or maybe."


def test_a_change_turned_the_other_way_round_fails_support() -> None:
    """Every word and figure of "statins increased 30-day mortality from 8% to 12%" is the evidence's,
    and the claim is its opposite: the gate passed it. A change the evidence states the other way
    round (and never this way) fails; a negated one ("did not increase") states no change, and the
    task is no evidence of a change ("Do statins reduce ...?" is a question)."""
    assert_support(STATINS, STATINS_TASK,
                   ["Yes. Statins reduced 30-day mortality from 12% to 8% in 120 patients.",
                    "Yes: they did not increase 30-day mortality; it fell from 12% to 8%, and HDL cholesterol was raised.",
                    "Yes: they didn’t increase 30-day mortality, and they don't lower HDL cholesterol.",
                    "Yes: statins were not associated with the lower HDL cholesterol of 120 patients."],
                   [("No. Statins increased 30-day mortality in 120 patients.", "increased 30-day mortality"),
                    ("Yes. Mortality went from 8% to 12% in 120 patients.", "from 8% to 12%"),
                    ("Yes, though statins lowered HDL cholesterol in 120 patients.", "lowered hdl")],
                   because="the other way round")
    rising = one_item(0xEE, "Statins", "In 120 patients, statins increased 30-day mortality.")
    support = checks(validate("No. Statins increased 30-day mortality in 120 patients.", rising, STATINS_TASK,
                              GateSettings()))["support"]
    assert support.passed, support.reason


def test_a_change_turned_round_in_the_passive_or_without_its_figure_fails_support() -> None:
    """The evidence says statins "reduced 30-day mortality": "mortality was increased", "mortality
    rose with statins" and "statins increased mortality" (the figure left out) all passed, as the
    check compared only a change word with the words after it, figures included. What a change
    without an object is said of is the word before it; a figure says which mortality, not what
    changes. A word inside a phrase ("a reduction in", "per patient") is no such subject. (One word
    is compared: "HDL cholesterol was lowered" is said of cholesterol, the evidence raised HDL.)"""
    assert_support(STATINS, STATINS_TASK,
                   ["Yes. In 120 patients mortality was reduced by statins, and HDL cholesterol was raised.",
                    "Yes. With statins, 30-day mortality fell from 12% to 8% in 120 patients.",
                    "Yes. Statins gave a reduction in 30-day mortality; the rate per patient was lower."],
                   [("No. In 120 patients mortality was increased by statins.", "mortality increased"),
                    ("No. Mortality rose with statins in 120 patients.", "mortality rose"),
                    ("No. Statins increased mortality in 120 patients.", "increased mortality"),
                    ("Yes, and HDL was lowered in 120 patients.", "hdl lowered")],
                   because="the other way round")


SAFETY_TRIAL = abstract(2, (
    "To determine whether statins are safe in older adults. In a randomised trial of 412 older adults, statin "
    "therapy was not associated with a lower risk of stroke at two years. There was no significant difference in "
    "30-day mortality between the statin and placebo groups (8.1% vs 8.4%). Adherence didn't differ between the "
    "groups, and muscle pain was reported more often with statins."))
SAFETY_TASK = "Do statins lower the risk of stroke in older adults?"


def test_a_negation_left_out_or_added_fails_support() -> None:
    """A quote copied with its "not" left out still matches 80 % of its 3-grams, and the support check
    compared words, not what the sentence says: "statin therapy was associated with a lower risk"
    passed against "was not associated with". Three words either side of the negation (fewer where
    the clause starts or ends, four in all at least) must match the evidence word for word, and the
    answer's wording must be nowhere in it; what an aim asks ("whether statins are safe") affirms
    nothing, in the evidence or in the answer ("the trial asked whether statin therapy was associated
    with a lower risk": a sentence quoted as is from two SciFact abstracts failed this way)."""
    assert_support(SAFETY_TRIAL, SAFETY_TASK, honest=[
        'No. Reference 1 says: "statin therapy was not associated with a lower risk of stroke at two years."',
        "No. There was no significant difference in 30-day mortality between the statin and placebo groups.",
        "No. Adherence did not differ between the groups; muscle pain was reported more often with statins.",
        "Statins are not safe in older adults: muscle pain was reported more often with statins.",
        "The trial asked whether statin therapy was associated with a lower risk of stroke at two years; it was not.",
    ], failing=[
        ('Yes. Reference 1 says: "statin therapy was associated with a lower risk of stroke at two years."',
         "therapy was associated with a"),
        ("Yes. Statin therapy was associated with a lower risk of stroke at two years in older adults.",
         "therapy was associated with a"),
        ("Yes. There was a significant difference in 30-day mortality between the statin and placebo groups.",
         "there was a significant difference in"),
        ("No. Adherence differed between the groups, and muscle pain was not reported more often with statins.",
         "muscle pain was not reported more often"),
    ], because="negation")


DENIED = abstract(7, (
    "In a randomised trial of 412 older adults, statin therapy did not reduce mortality at two years. Aspirin "
    "failed to improve survival in the cohort, and there was no significant increase in stroke. Patients who did "
    "not smoke had reduced hospital stays. Exercise did not lower blood pressure in women but lowered blood "
    "pressure in men."))


def test_a_change_the_evidence_denies_fails_support() -> None:
    """"Statin therapy reduced mortality" passed against "statin therapy did not reduce mortality": the
    negation check compares words in place, and "reduced" is not "reduce" (46 of 58 such sentences of
    PubMedQA and SciFact abstracts fail now, none did; benchmarks/claims.py). A change counts as
    denied only with the negation right before it ("did not reduce", "failed to improve", "no
    significant increase in"), not "patients who did not smoke had reduced ..."; one the evidence also
    states undenied (blood pressure lowered in men) is no flip, nor is an answer's change with a
    negation after it in its clause ("the reduction in mortality was not significant")."""
    assert_support(DENIED, "Do statins reduce mortality in older adults?", honest=[
        "No. Statin therapy did not reduce mortality at two years, and aspirin failed to improve survival.",
        "Patients who did not smoke had reduced hospital stays.",
        "Exercise lowered blood pressure in men.",
        # the negation after the change, in its clause, says what the evidence says
        "The reduction in mortality with statin therapy was not significant at two years.",
        "An increase in stroke was not seen, and the improvement in survival with aspirin did not occur.",
    ], failing=[
        ("Yes. Statin therapy reduced mortality at two years.", "reduced mortality (the evidence: reduce mortality, denied)"),
        ("Yes. Mortality was reduced by statin therapy.", "mortality reduced"),
        ("Aspirin improved survival in the cohort.", "improved survival"),
        ("Aspirin increased stroke in the cohort.", "increased stroke"),
    ], because="changes the evidence says did not happen")


WITHOUT = abstract(6, (
    "Residents in programs without EUS fellowships reported performing more scans (P = .04). Patients with and "
    "without diabetes were enrolled. Mortality was higher among patients with renal failure."))


def test_with_for_without_fails_support() -> None:
    """"Programs with EUS fellowships" for the evidence's "programs without EUS fellowships" passed:
    every word is the evidence's (1 of 662 such sentences of PubMedQA and SciFact abstracts failed,
    benchmarks/claims.py). "without" and "lacking" are now negations like "not": put in for "with", or
    taken out, they turn the claim round; where the evidence says both ("with and without diabetes")
    neither is a flip."""
    assert_support(WITHOUT, "Do programs without fellowships scan more?", honest=[
        "Yes. Residents in programs without EUS fellowships reported performing more scans (P = .04).",
        "Yes. Residents in programs lacking EUS fellowships reported performing more scans (P = .04).",
        "Patients without diabetes were enrolled, and patients with diabetes too.",
    ], failing=[
        ("No. Residents in programs with EUS fellowships reported performing more scans (P = .04).",
         "programs with eus fellowships reported (the evidence: residents in programs without eus"),
        ("Mortality was higher among patients without renal failure.", "among patients without renal failure"),
    ], because="negation")


COMPARISONS = abstract(3, (
    "In a randomised trial of 412 older adults, statins were superior to placebo for preventing a second stroke. "
    "Mortality was higher in men than in women at two years. Surgery outperformed physiotherapy on pain scores, "
    "and the drug was more effective than aspirin in preventing recurrence, in more than 40 percent of patients. "
    "Patients presenting to a level III trauma center had a higher risk of death than those presenting to the "
    "level I center."))
COMPARISONS_TASK = "Are statins better than placebo after a stroke?"


def test_a_comparison_turned_round_fails_support() -> None:
    """Every word of "placebo was superior to statins" is the evidence's, so word-level support
    passed it where the evidence says statins were superior to placebo; the same for "higher in
    women than in men" and the same order with the opposite word. The converse said with the
    opposite word ("placebo was inferior to statins") is the evidence's claim; "more than 40 percent"
    is a bound, not two things compared."""
    assert_support(COMPARISONS, COMPARISONS_TASK, honest=[
        "Yes. Statins were superior to placebo for preventing a second stroke in older adults.",
        "Yes. Placebo was inferior to statins for preventing a second stroke.",
        "Mortality was higher in men than in women at two years; surgery outperformed physiotherapy on pain scores.",
        "Surgery performed better than physiotherapy on pain scores.",
        "The drug was more effective than aspirin in more than 40 percent of patients.",
    ], failing=[
        ("No. Placebo was superior to statins for preventing a second stroke in older adults.",
         "placebo superior to statins (the evidence: statins superior to placebo)"),
        ("Mortality was higher in women than in men at two years.", "women higher than men"),
        ("Mortality was lower in men than in women at two years.", "the evidence: men higher than women"),
        ("Physiotherapy outperformed surgery on pain scores.", "physiotherapy outperforms surgery"),
        # the word next to the comparative is a verb: the claim is about physiotherapy and surgery
        ("Physiotherapy performed better than surgery on pain scores.", "physiotherapy better than surgery"),
        ("Aspirin was more effective than the drug in preventing recurrence.", "aspirin more than drug"),
    ], because="comparisons the other way round")


def test_a_comparison_said_from_its_other_side_passes_support() -> None:
    """"Aspirin was less effective than the drug" is the evidence's "the drug was more effective than
    aspirin" said from aspirin's side; both checks failed it: the direction check read "less
    effective" against "more effective", and the comparison check took "effective" (what is compared)
    for a side. A side's words that the other side also has ("a level III center than a level I
    center") say what both share, not which is which. The converse's own opposite still fails."""
    assert_support(COMPARISONS, COMPARISONS_TASK, honest=[
        "Aspirin was less effective than the drug in preventing recurrence.",
        "Women had lower mortality than men at two years.",
        "Mortality was lower in women than in men at two years.",
        "Patients treated at a level III center had a higher mortality rate than those treated at a level I center.",
    ], failing=[
        ("Aspirin was less effective than the drug... no: the drug was less effective than aspirin.",
         "drug less than aspirin"),
        ("Men had lower mortality than women at two years.", "men lower than women"),
    ], because="the other way round")


LINKED_COMPARISONS = abstract(4, (
    "CD40 expression was significantly lower in IMA samples compared with saphenous grafts. "
    "TLR3 mRNA expression was higher in NSCLC vs. IPF tissue. Statin therapy reduced mortality relative to "
    "placebo. Compared with men, women waited longer."))
LINKED_TASK = "Is CD40 expressed less in IMA samples?"


def test_a_comparison_linked_by_compared_with_or_versus_is_read_both_ways() -> None:
    """Half the comparisons in PubMedQA and SciFact abstracts say "compared with", "compared to",
    "versus" or "relative to" instead of "than"; none was read, so "higher in IPF vs. NSCLC" passed
    where the evidence says higher in NSCLC. Read like "than" (after a comparative, or a change such
    as "reduced"), a swap fails, the converse and a paraphrase with "than" pass; a link before its
    sides ("compared with men, women waited longer") is read too, its sides from their starts."""
    assert_support(LINKED_COMPARISONS, LINKED_TASK, honest=[
        "Yes. CD40 expression was lower in IMA samples than in saphenous grafts.",
        "Yes. CD40 expression was higher in saphenous grafts compared to IMA samples.",
        "TLR3 mRNA expression was lower in IPF versus NSCLC tissue.",
        "Statin therapy reduced mortality compared with placebo.",
        "Compared with men, women waited longer.",
        "Compared with women, men had shorter waits.",
    ], failing=[
        ("Compared with women, men waited longer.", "men longer than women (the evidence: women longer than men)"),
        ("No. CD40 expression was lower in saphenous grafts compared with IMA samples.",
         "grafts lower than ima (the evidence: ima lower than grafts)"),
        ("TLR3 mRNA expression was higher in IPF vs. NSCLC tissue.", "ipf higher than nsclc"),
        ("Placebo reduced mortality relative to statin therapy.",
         "placebo reduced compared with statin (the evidence: statin reduced compared with placebo)"),
    ], because="comparisons the other way round")


TWO_WAY_COMPARISONS = abstract(5, (
    "The mean muscarinic receptor density was higher in patients than in control subjects. The increase "
    "in heart rate after atropine was lower in patients compared with control subjects."))


def test_a_comparison_is_judged_by_the_evidences_comparison_about_the_same_thing() -> None:
    """An abstract that compares the same two groups both ways (density higher in patients, the heart
    rate's increase lower) excused any swap of either: "density was higher in control subjects than in
    patients" read as the other comparison said from its other side. The claim is now judged by the
    evidence's comparison sharing most of its words."""
    assert_support(TWO_WAY_COMPARISONS, "Is muscarinic receptor density higher in these patients?", honest=[
        "Yes. The mean muscarinic receptor density was higher in patients than in control subjects.",
        "Yes. The receptor density was lower in control subjects than in patients.",
        "The increase in heart rate after atropine was higher in control subjects than in patients.",
    ], failing=[
        ("No. The mean muscarinic receptor density was higher in control subjects than in patients.",
         "subjects higher than patients (the evidence: patients higher than subjects)"),
        ("The increase in heart rate after atropine was lower in control subjects than in patients.",
         "subjects lower than patients"),
    ], because="comparisons the other way round")


def test_comparisons_are_read_in_linear_time() -> None:
    """Fillers and one-letter words are skipped when looking for what a comparison compares; without
    a bound on how far to look, 100 KB of "higher a b than c d " was read back to its start from every
    "than" (about a minute); COMPARED_SPAN words either side now."""
    import time

    started = time.process_time()
    for unit in ["higher a b than c d ", "more than the ", "outperformed the "]:
        text = (unit * 100_000)[:100_000]
        bundle = COMPARISONS.model_copy(update={"exemplars": [COMPARISONS.exemplars[0].model_copy(update={"text": text})]})
        validate(text, bundle, COMPARISONS_TASK, GateSettings())
    assert time.process_time() - started < 20


def test_words_that_are_not_figures_are_not_checked_as_figures() -> None:
    """Ordinals ("twenty-first", and "thirty second", which may be 32nd or 30 s), a scale word alone
    and small counts are no figures; nor is a learning rate at the end of a sentence cut short."""
    for text in ["The twenty-first attempt waited a thirty second interval.", "Several thousand workers, a million rows.",
                 "Check one, two or three workers."]:
        assert figures_in(text) == [], text
    assert figures_in("It trains at 3e-4.") == ["0.0003"]
    assert figures_in("Scale 10e400 or 1e-999999.") == ["10e400", "1e-999999"]  # as written, never expanded


def test_a_version_is_a_figure_however_small() -> None:
    """"v5" for the evidence's v4 passed: its 5 is a small count to the figure check."""
    assert figures_in("Pin lodash to v4.17.21, not v5, in 3 steps.") == ["4.17.21", "5"]
    api = one_item(0xEF, "API", "Clients call the v2 endpoint; v1 was removed.")
    task = "Which API version do clients call?"
    support = checks(validate("Clients call the v2 endpoint, since v1 was removed.", api, task, GateSettings()))["support"]
    assert support.passed, support.reason
    support = checks(validate("Clients call the v3 endpoint, since v1 was removed.", api, task, GateSettings()))["support"]
    assert not support.passed and "'v3'" in support.reason, support.reason


def test_a_figure_signed_the_other_way_fails_support() -> None:
    """"+12%" where the evidence says the latency changed by -12% passed: the figure check compares
    magnitudes (an unsigned "12%" or "fell 12%" says the same as -12%). An explicit sign the
    evidence gives only the other way round is a reversed figure; the minus sign U+2212 is a sign."""
    drift = one_item(0xF0, "Latency", "After the cache change p95 latency moved by \u221212% and throughput by +40%.")
    assert_support(drift, "How did the cache change move latency?",
                   ["p95 latency moved by -12% and throughput by 40%.", "p95 latency fell 12% while throughput rose 40%."],
                   [("p95 latency moved by +12% after the cache change.", "+12%"),
                    ("p95 latency moved by -12% and throughput by -40%.", "-40%")],
                   because="signed the other way")


def test_a_sentence_joined_without_its_space_is_no_dotted_name() -> None:
    """"...refer patients to hospice.The decision..." was read as the code identifier hospice.The,
    which the evidence lacks: an honest PubMedQA conclusion failed support on it."""
    assert identifiers_in("Refer them to hospice.The team agreed; call os.path.join and config.Settings now.") == [
        "os.path.join", "config.Settings"]


def test_a_lone_surrogate_in_an_answer_is_read_not_raised() -> None:
    """Numbers in words are read by text2num, which takes UTF-8 only: a lone surrogate (what JSON's
    "\\ud800" escape reads as) in an answer raised from the gate. The commands refuse such text where
    it comes in (tests/test_lone_surrogates.py); `validate` is also a library function."""
    support = checks(validate("The retry policy waits thirty seconds \ud800.", POLICY, POLICY_TASK, GateSettings()))["support"]
    assert support.passed, support.reason
    assert figures_in("ninety \udfff seconds") == ["90"]


def test_a_number_of_thousands_of_digits_is_a_failed_check_not_a_crash() -> None:
    """int() refuses strings over 4,300 digits: the gate compares such a figure, or a reference
    number, as text and quotes it briefly."""
    huge = "7" * 5000
    result = validate(f"The retry policy runs {huge} workers, per reference {huge}.", POLICY, POLICY_TASK, GateSettings())
    by_name = checks(result)
    assert not by_name["support"].passed and not by_name["citations"].passed
    assert len(by_name["support"].reason) < 300 and len(by_name["citations"].reason) < 300


def test_a_fluent_answer_about_something_else_fails_support() -> None:
    answer = ("Yes. Regular aerobic exercise strengthens cardiac muscle, lowers blood pressure and improves "
              "insulin sensitivity, which together explain better long-term outcomes in older adults.")
    support = checks(validate(answer, TRIAL, TRIAL_TASK, GateSettings()))["support"]
    assert not support.passed and "specific content beyond the task is in the evidence" in support.reason


def test_without_retrieval_an_invented_patch_is_not_accepted() -> None:
    """The seeds' failure mode: fluent, specific, made up, and signed off as a pass."""
    patch = ("Fix the flush path in the batcher:\n```rust\nfn flush(&mut self) -> Result<(), BatchError> {\n"
             "    let pending = self.queue.drain_pending(MAX_BATCH_BYTES)?;\n    self.writer.commit_atomic(pending)\n}\n```\n"
             "Set MAX_BATCH_BYTES to 65536 so a partial write is retried once.")
    result = validate(patch, ContextBundle(), "Review the batcher for defects and give a patch.", GateSettings())
    assert not result.passed and not checks(result)["support"].passed, checks(result)["support"].reason


def test_support_thresholds_come_from_settings() -> None:
    answer = "Yes. Statin therapy reduced 30-day mortality by 18%; clinicians should weigh tolerability carefully."
    strict = checks(validate(answer, TRIAL, TRIAL_TASK, GateSettings(min_word_support=1.0)))["support"]
    loose = checks(validate(answer, TRIAL, TRIAL_TASK, GateSettings(min_word_support=0.0)))["support"]
    assert not strict.passed and loose.passed


def test_marker_lines_and_the_nonce_are_prompt_markup() -> None:
    bundle = TRIAL.model_copy(update={"nonce": "a1b2c3d4e5f6"})
    copied = "=== reference 1 · accepted · id pubmed:1 [a1b2c3d4e5f6] ===\nIn a randomised trial of 412 patients..."
    assert not checks(validate(copied, bundle, TRIAL_TASK, GateSettings()))["prompt_markup"].passed
    leaked = "Yes, statins reduced mortality by 18% in the trial [a1b2c3d4e5f6] of 412 patients."
    assert "nonce" in checks(validate(leaked, bundle, TRIAL_TASK, GateSettings()))["prompt_markup"].reason


def test_a_task_with_options_gets_one_of_them_first() -> None:
    task = "Is the cache safe?\nAnswer yes, no or maybe as the first word, then quote the evidence."
    assert checks(validate("No. The cache serves stale entries after invalidation, the review says.", BUNDLE, task,
                           GateSettings()))["answer_form"].passed
    copied = checks(validate("Yes, no or maybe. The cache serves stale entries after invalidation.", BUNDLE, task,
                             GateSettings()))["answer_form"]
    assert not copied.passed and "no single decision" in copied.reason
    assert not checks(validate("The cache serves stale entries after invalidation, the review says.", BUNDLE, task,
                               GateSettings()))["answer_form"].passed
    # a choice question is not a review: the checklist does not apply
    assert "skipped" in checks(validate("No. The cache is stale.", BUNDLE, task, GateSettings()))["checklist_overlap"].reason


def test_a_decision_its_own_quote_labels_otherwise_fails_answer_form() -> None:
    """The 0.5B answered "Info." and quoted the review line "Error swallowed in retry path, severity:
    medium" as its support (a recorded escalation-benchmark answer): the gate passed it. A label the
    quote sets apart ("(high)", "[low]", "severity: medium") that is not the decision contradicts it;
    the same word in running prose ("no difference", "high memory") is no label."""
    task = ("A review of `api/auth/tokens.py` found: Error swallowed in retry path. What severity should this "
            "finding get? Answer info, low, medium, high or critical as the first word, then quote the earlier "
            "review that supports it.")
    assert_check("answer_form", BUNDLE, task, honest=[
        'Medium. Reference 1 says: "Error swallowed in retry path, severity: medium, confidence: 0.81"',
        'Info. Reference 1 says: "Error swallowed in retry path; high memory use was not seen."',
        'Low. Reference 1 says: "Error swallowed in retry path (low) and a timeout (high)."',
    ], failing=[
        ('Info. Reference 1 says: "Error swallowed in retry path, severity: medium, confidence: 0.81"', ": medium"),
        ('Critical. Reference 2 says: "Integer overflow on large offsets (high) in the export job."', "(high)"),
    ])


SEVERITY_TASK = ("A review of `api/auth/tokens.py` found: Missing timeout on outbound call. What severity should this "
                 "finding get? Answer info, low, medium, high or critical as the first word, then quote the earlier "
                 "review that supports it.")
REVIEWS = ContextBundle(exemplars=[
    RetrievedItem(id="rag-179f68fbaef751a5", score=0.9, rank=1, category="accepted", text=(
        "# Review: `api/auth/tokens.py`\n\n## Summary\nReviewed against the architecture notes and symbol index. "
        "2 finding(s), patches below.\n\n## Findings\n\n### 1. Missing timeout on outbound call \u2014 severity: medium, "
        "confidence: 0.83\n`refresh_token` awaits the provider with no deadline; a hung upstream pins a worker forever.")),
    RetrievedItem(id="rag-18c2633a735c1721", score=0.8, rank=2, category="accepted",
                  text="Phase 39: secret compared with non-constant-time equality (low) in api/auth/tokens.py; resolution fixed."),
    RetrievedItem(id="rag-1a9f1b8b098c8399", score=0.7, rank=3, category="accepted",
                  text="In `tools/release/changelog.py`, stale cache entry served after invalidation was reported."),
])


def test_a_decision_nothing_labelled_backs_fails_answer_form() -> None:
    """Both packaged models answered every severity question "Info." and quoted whatever they saw: a
    summary line, a file header, another finding's sentence (recorded escalation-benchmark answers:
    16 of the 18 wrong answers the gate still passed in the local-only run's review family). Where the
    references label the options for what the task asks about, the paragraph a quote comes from must
    label the decision; evidence that labels nothing, or labels other things, asks for nothing."""
    assert_check("answer_form", REVIEWS, SEVERITY_TASK, honest=[
        'Medium. Reference 1 says: "Missing timeout on outbound call \u2014 severity: medium, confidence: 0.83"',
        # the finding's own paragraph carries the label under its header
        'Medium. Reference 1 says: "`refresh_token` awaits the provider with no deadline; a hung upstream"',
        'Medium. The review rated the missing timeout medium.',
        'Low. Reference 2 says: "secret compared with non-constant-time equality (low) in api/auth/tokens.py"',
    ], failing=[
        ('Info. Reference 1 says: "Reviewed against the architecture notes and symbol index. 2 finding(s), patches below."',
         "no passage it quotes is labelled"),
        ('Info. Reference 1 says: "`refresh_token` awaits the provider with no deadline; a hung upstream pins a worker"',
         "no passage it quotes is labelled"),
        ('Critical. Reference 3 says: "stale cache entry served after invalidation was reported"',
         "no passage it quotes is labelled"),
        ('Info. The timeout is only informational.', "the references label only"),
    ])
    # references without labels (PubMedQA's abstracts), or whose labels concern something else
    # (a config's "enabled: no"), do not ask for one
    unlabelled = REVIEWS.model_copy(update={"exemplars": REVIEWS.exemplars[2:]})
    assert checks(validate('Info. Reference 1 says: "stale cache entry served after invalidation was reported"',
                           unlabelled, SEVERITY_TASK, GateSettings()))["answer_form"].passed
    config = ContextBundle(exemplars=[
        RetrievedItem(id="rag-0", score=0.9, rank=1, category="accepted",
                      text="retries:\n  enabled: no\n  backoff: yes\n\nThe retry loop logs the error and drops it."),
    ])
    assert checks(validate('Yes. Reference 1 says: "The retry loop logs the error and drops it."', config,
                           "Does the retry path swallow errors? Answer yes or no, then quote the evidence.",
                           GateSettings()))["answer_form"].passed


@pytest.mark.parametrize("where", ["answer", "bundle", "both"])
def test_backing_a_decision_reads_pathological_text_in_linear_time(where: str) -> None:
    """Every quote looked up in every labelled paragraph took 77 s for 100 KB of each (an answer of
    quotes, a reference of labelled paragraphs); only an answer's first MAX_LOCATED_QUOTES quotes are
    looked up now (under 3 s)."""
    import time

    started = time.process_time()
    for unit in ["(info)", ": low ", "a:", "severity: low a b c\n\n", '"a b c d e" ', "a" * 50 + ":", "\n\n"]:
        size = 100_000 if where == "both" else 40_000
        text = (unit * size)[:size]
        bundle = REVIEWS if where == "answer" else REVIEWS.model_copy(
            update={"exemplars": [REVIEWS.exemplars[0].model_copy(update={"text": text})]})
        quotes = ('"a b c d" ' * size)[:size]
        answer = "Info. " + {"answer": text, "bundle": 'Reference 1 says: "a b c d e"', "both": quotes}[where]
        validate(answer, bundle, SEVERITY_TASK, GateSettings())
    assert time.process_time() - started < 30


def test_a_which_file_task_needs_a_file_path() -> None:
    task = "The router drops the provider header. Which file must change to fix this issue?"
    named = checks(validate("crates/gateway/src/main.rs: ProviderAdapter builds the request without the header.",
                            BUNDLE, task, GateSettings()))["answer_form"]
    assert named.passed
    vague = checks(validate("The ProviderAdapter must add the provider header to every request it builds.",
                            BUNDLE, task, GateSettings()))["answer_form"]
    assert not vague.passed and "names no file path" in vague.reason


def test_a_quote_from_a_reference_passes_and_an_invented_one_fails() -> None:
    task = "Where does routing live?"
    quoted = 'Reference 1 says: "Routing lives in crates/gateway/src/main.rs and uses ProviderAdapter."'
    assert checks(validate(quoted, BUNDLE, task, GateSettings()))["citations"].passed
    # cut by the token limit: the open quote still matches as far as it goes
    assert checks(validate('Reference 1 says: "Routing lives in crates/gateway/src/main.rs and', BUNDLE, task,
                           GateSettings()))["citations"].passed
    invented = checks(validate('Reference 1 says: "Routing lives in a table of providers kept in memory."', BUNDLE,
                               task, GateSettings()))["citations"]
    assert not invented.passed and "in no reference" in invented.reason


def test_a_quote_given_as_another_references_words_fails_citations() -> None:
    """The 0.5B answered PubMedQA questions with "Reference 1 says:" (the question's own abstract) and
    quoted reference 2, another study or an earlier answer (12 recorded answers, each passed: the
    quote was in the evidence). A reader looks a quote up where the answer says it is."""
    own = RetrievedItem(id="pubmed:1", score=1.0, rank=1, category="accepted", title="Housestaff experience and tests",
                        text="Tests ordered for infants did not differ between first-year and senior residents.")
    other = RetrievedItem(id="pubmed:2", score=0.5, rank=2, category="accepted", title="Monitoring a first transfusion",
                          text="Some pediatric patients are admitted to the intensive care unit during their first transfusion.")
    bundle = ContextBundle(exemplars=[own, other], validation_steps=["Check that every ordered test is counted once"])
    task = "Does housestaff experience influence tests ordered for infants?"
    assert_check("citations", bundle, task, honest=[
        'No. Reference 1 says: "Tests ordered for infants did not differ between first-year and senior residents."',
        'Reference 2 (accepted) reports that "some pediatric patients are admitted to the intensive care unit."',
        'Reference 1, whose title is "Housestaff experience and tests", answers it.',
        # cited with another reference, the quote may be either's
        'Reference 1 and reference 2 say: "some pediatric patients are admitted to the intensive care unit."',
        'Reference 1 (and 2) says: "some pediatric patients are admitted to the intensive care unit."',
    ], failing=[
        ('Yes. Reference 1 says: "Some pediatric patients are admitted to the intensive care unit during their first"',
         "as reference 1's, but it is reference 2's"),
        ('Yes. Reference 2 says: "Check that every ordered test is counted once"', "but it is the checklist's"),
    ])


def test_citing_a_reference_the_prompt_did_not_have_fails() -> None:
    beyond = checks(validate("Reference 2 shows routing in crates/gateway/src/main.rs.", BUNDLE, "Where?",
                             GateSettings()))["citations"]
    assert not beyond.passed and "reference 2" in beyond.reason and "had 1" in beyond.reason
    # without retrieval there is nothing to cite: quoting the question as "Reference 1" is invented evidence
    task = "Metered-dose inhalers. Do health care providers know what to teach?\nAnswer yes, no or maybe first."
    none = checks(validate('No. Reference 1 says: "Do health care providers know what to teach?"', ContextBundle(),
                           task, GateSettings()))["citations"]
    assert not none.passed and "had none" in none.reason and "in no reference" in none.reason


def test_choice_and_file_tasks_get_a_worked_example_in_their_own_form() -> None:
    from runtime.task_form import worked_example

    choice = "Is the cache safe? Answer info, low, high or critical as the first word, then quote the evidence."
    example = worked_example(choice, "n0nce")
    assert [m["role"] for m in example] == ["user", "assistant"]
    assert "info, low, high or critical" in example[0]["content"] and "[n0nce]" in example[0]["content"]
    assert example[1]["content"].startswith("High, as reference 1 labels it")
    yes_no = worked_example("Does it help? Answer yes, no or maybe first.", "n0nce")
    assert yes_no[1]["content"].startswith("No.") and "aspirin" in yes_no[0]["content"]
    assert worked_example("Which file must change to fix this issue?", "x")[1]["content"].startswith("billing/invoice.py")
    assert worked_example("Audit provider routing in the gateway", "x") == []
    messages = render(choice, BUNDLE, make_nonce(choice, BUNDLE))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]


def test_a_choice_of_labels_is_shown_read_off_the_references_label() -> None:
    """The example for "what severity ... info, low, medium, high or critical" was the aspirin
    question answered with the first option: both packaged models then answered "Info." to every
    severity question (benchmarks/results/escalation_local_answers.jsonl, 10 of 10). Now the example's
    reference labels its finding under the word the task asks about, the answer gives that label and
    quotes the labelled line, and its decision is the middle option, not the first one listed."""
    from runtime.task_form import worked_example

    task = ("A review of `api/auth/tokens.py` found: Missing timeout. What severity should this finding get? "
            "Answer info, low, medium, high or critical as the first word, then quote the review that supports it.")
    user, answer = (m["content"] for m in worked_example(task, "n0nce"))
    assert "> Rounding before tax in round_total() \u2014 severity: medium" in user
    assert answer == 'Medium, as reference 1 labels it: "Rounding before tax in round_total() \u2014 severity: medium"'
    assert "What severity should it get? Answer info, low, medium, high or critical" in user
    other = "Which tier fits? Answer bronze, silver or gold first."  # the asked-about word: tier
    assert 'tier: silver"' in worked_example(other, "x")[1]["content"]
    for unnamed in ["Rate it. Answer low or high first.", "What does it need? Answer low or high first."]:
        assert "rating: high" in worked_example(unnamed, "x")[1]["content"], unnamed


def test_copying_the_worked_example_fails_the_gate() -> None:
    from runtime.task_form import worked_example

    for task in ["Is the cache safe?\nAnswer yes, no or maybe as the first word, then quote the sentence that decides it.",
                 "What severity is it? Answer info, low, medium, high or critical first, then quote the review."]:
        copied = worked_example(task, make_nonce(task, BUNDLE))[1]["content"]
        result = validate(copied, BUNDLE, task, GateSettings())
        assert not result.passed and not checks(result)["citations"].passed, copied


def test_reasons_name_a_huge_invented_path_briefly() -> None:
    """Reasons are logged with every run (and collected as evidence): a 40,000-character "path" in
    an answer was quoted whole, five times over in the worst case."""
    huge = "src/" + "a/" * 20_000 + "b.py"
    result = validate(GOOD + f" See `{huge}`.", BUNDLE, TASK, GateSettings())
    grounding = checks(result)["grounding"]
    assert not grounding.passed and "src/a/a/" in grounding.reason and len(grounding.reason) < 300
    assert all(len(c.reason) < 2_000 for c in result.checks)


@pytest.mark.parametrize("where", ["answer", "task", "bundle"])
def test_the_gate_reads_pathological_text_in_linear_time(where: str) -> None:
    """Regexes that rescanned a run of characters from every position inside it made the gate
    quadratic: 40 KB of "1," took minutes (the unit regex), "a+a+..." (paths), "v1.v1..." (dotted
    names), "a.a.a..." (URL schemes) and blank lines in a task or a retrieved text (list markers)
    tens of seconds, and ",answer ,answer ..." in a task (a choice's option list had no bound: 40 s).
    `replay --check` reads answers, tasks and contexts from anyone's file, serve a task from any
    caller (up to [serve] max_request_bytes, 1 MiB by default). All of
    them take about 2 s together now; the bound leaves a wide margin for a slow machine."""
    import time

    started = time.process_time()
    for unit in ["1,", "a+", "/+", "v1.", "a.", "\n\n", "thirty-", "a.a/", "\n ", ",answer ", "a@a.", "$1,", "f.rs:1 ", "x://)", "more ", "from 1 to ",
                 "ab-1", "```\n", "two s ", "was reduced by ", "was ", "a not b ", "no a b c ", "didn't ",
                 'reference 1 "a b c d" ', "reference 1" + " " * 50, "superior to x "]:
        text = (unit * 40_000)[:40_000]
        bundle = POLICY if where != "bundle" else POLICY.model_copy(
            update={"exemplars": [POLICY.exemplars[0].model_copy(update={"text": text})]})
        validate(text if where == "answer" else "The retry policy waits 30 seconds.", bundle,
                 text if where == "task" else POLICY_TASK, GateSettings())
    assert time.process_time() - started < 30
