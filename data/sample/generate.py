"""Deterministic generator for the sample workspace streams (data/sample/_kb/*.jsonl).

Why a generator and not hand-written files: the sample must be large (>1,000 rows), realistic,
carry planted bad rows at known places, and be byte-reproducible, so tests can rebuild it and
compare. Everything comes from one seeded `random.Random` and fixed base timestamps; nothing
reads the wall clock or the environment.

Run: `python data/sample/generate.py [--out DIR]` (default: data/sample/_kb next to this file).
It also writes data/sample/bad_rows.json, the manifest of planted bad rows (file, line number,
kind, expected quarantine reason) that tests assert against.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 20260427
BASE = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)
SPAN_MINUTES = 112 * 24 * 60  # ~16 weeks of activity: January to late April 2026
HUGE_LINE_BYTES = 3 * 1024 * 1024

# --------------------------------------------------------------------------------------------
# The repository the agents worked on (invented): files with a language and identifiers to cite.
# --------------------------------------------------------------------------------------------

FILES: list[tuple[str, str, list[str]]] = [
    ("services/ingest/src/batcher.rs", "rust", ["Batcher::flush", "Batcher::push", "max_batch"]),
    ("services/ingest/src/wal.rs", "rust", ["Wal::append", "Wal::replay", "segment_bytes"]),
    ("services/ingest/src/schema.rs", "rust", ["SchemaRegistry::resolve", "FieldType", "compat_mode"]),
    ("services/query/src/planner.rs", "rust", ["Planner::plan", "pushdown_filters", "CostModel"]),
    ("services/query/src/cache.rs", "rust", ["ResultCache::get", "ResultCache::evict", "ttl"]),
    ("services/query/src/exec/join.rs", "rust", ["HashJoin::probe", "build_side", "spill_dir"]),
    ("services/storage/src/compaction.rs", "rust", ["Compactor::run", "level_target", "tombstones"]),
    ("services/storage/src/manifest.rs", "rust", ["Manifest::commit", "Manifest::load", "version"]),
    ("services/gateway/src/router.rs", "rust", ["Router::route", "ProviderAdapter", "fallback_chain"]),
    ("services/gateway/src/breaker.rs", "rust", ["CircuitBreaker::call", "failure_ratio", "half_open"]),
    ("api/handlers/orders.py", "python", ["create_order", "OrderSchema", "idempotency_key"]),
    ("api/handlers/refunds.py", "python", ["issue_refund", "RefundPolicy", "max_refund_cents"]),
    ("api/auth/tokens.py", "python", ["verify_token", "rotate_signing_key", "leeway_s"]),
    ("api/db/session.py", "python", ["get_session", "engine", "pool_recycle"]),
    ("api/workers/retry.py", "python", ["retry_with_backoff", "jitter", "max_attempts"]),
    ("api/workers/export_job.py", "python", ["run_export", "chunk_rows", "ExportManifest"]),
    ("pipelines/etl/dedupe.py", "python", ["dedupe_batch", "fingerprint", "window_s"]),
    ("pipelines/etl/loaders.py", "python", ["load_csv", "coerce_types", "encoding"]),
    ("pipelines/ml/features.py", "python", ["build_features", "rolling_mean", "leakage_guard"]),
    ("web/src/api/client.ts", "ts", ["fetchJson", "retryPolicy", "baseUrl"]),
    ("web/src/state/cart.ts", "ts", ["addItem", "cartReducer", "persistKey"]),
    ("web/src/components/Checkout.tsx", "ts", ["Checkout", "submitPayment", "disabled"]),
    ("web/src/hooks/useSession.ts", "ts", ["useSession", "refreshToken", "expiresAt"]),
    ("tools/release/changelog.py", "python", ["render_changelog", "group_commits", "since_tag"]),
]
NEVER_REVIEWED = ["services/legacy/src/old_export.rs", "api/handlers/legacy_webhooks.py"]

REVIEW_MODELS = ["qwen2.5-coder:32b", "deepseek-coder-v2:16b", "llama3.1:70b", "gpt-oss:120b", "kimi-k2"]
OBSERVER_MODELS = ["gpt-oss:120b", "claude-sonnet-4", "deepseek-v3.1:671b"]
EXTRACTOR_MODELS = ["qwen2.5:7b-instruct", "llama3.1:8b"]
CORPORA = ["arch_v1", "symbols_v1", "prd_v3", "runbooks_v2", "incidents_2025"]

# Findings: (title, severity, why, language -> (before, after), validation steps)
ISSUES: list[dict[str, Any]] = [
    {
        "title": "Unbounded buffer growth on slow consumers",
        "severity": "high",
        "why": "`{sym}` keeps appending while the downstream is back-pressured; nothing caps memory.",
        "rust": ("    self.buf.push(item);", "    if self.buf.len() >= self.max_batch { self.flush()?; }\n+    self.buf.push(item);"),
        "python": ("    buffer.append(item)", "    if len(buffer) >= max_items:\n+        flush(buffer)\n+    buffer.append(item)"),
        "ts": ("  queue.push(item);", "  if (queue.length >= maxQueue) await flush(queue);\n+  queue.push(item);"),
        "steps": ["Verify memory stays flat when the consumer is paused for 60 s.", "Check that flush is called once the cap is reached."],
    },
    {
        "title": "Error swallowed in retry path",
        "severity": "medium",
        "why": "The error from `{sym}` is logged and dropped, so callers see success on a failed write.",
        "rust": ("        Err(e) => { warn!(\"retry: {e}\"); Ok(()) }", "        Err(e) => { warn!(\"retry: {e}\"); Err(e) }"),
        "python": ("    except Exception:\n-        log.warning(\"retry failed\")", "    except Exception:\n+        log.warning(\"retry failed\")\n+        raise"),
        "ts": ("  } catch (e) { console.warn(e); }", "  } catch (e) { console.warn(e); throw e; }"),
        "steps": ["Assert the caller receives the error after the last retry.", "Confirm the retry counter metric increments per attempt."],
    },
    {
        "title": "Off-by-one in range check",
        "severity": "medium",
        "why": "`{sym}` uses `<=` against a length, reading one element past the end on full batches.",
        "rust": ("    for i in 0..=n {", "    for i in 0..n {"),
        "python": ("    for i in range(n + 1):", "    for i in range(n):"),
        "ts": ("  for (let i = 0; i <= n; i++) {", "  for (let i = 0; i < n; i++) {"),
        "steps": ["Verify a batch of exactly max size is processed without an index error.", "Check the boundary test case n == len."],
    },
    {
        "title": "Non-idempotent write on retry",
        "severity": "high",
        "why": "A retried request re-inserts the row because `{sym}` does not carry an idempotency key.",
        "rust": ("    db.insert(&row).await?;", "    db.insert_if_absent(&row, row.key()).await?;"),
        "python": ("    session.add(order)", "    if not session.get(Order, idempotency_key):\n+        session.add(order)"),
        "ts": ("  await post('/orders', body);", "  await post('/orders', body, { headers: { 'Idempotency-Key': key } });"),
        "steps": ["Ensure two identical requests create one row.", "Verify the second response returns the first row's id."],
    },
    {
        "title": "Secret compared with non-constant-time equality",
        "severity": "critical",
        "why": "`{sym}` compares signatures with `==`, which leaks timing information.",
        "rust": ("    if sig == expected {", "    if constant_time_eq(sig.as_bytes(), expected.as_bytes()) {"),
        "python": ("    if signature == expected:", "    if hmac.compare_digest(signature, expected):"),
        "ts": ("  if (sig === expected) {", "  if (timingSafeEqual(Buffer.from(sig), Buffer.from(expected))) {"),
        "steps": ["Verify the comparison uses a constant-time helper.", "Check the unit test for a wrong signature of equal length."],
    },
    {
        "title": "Missing timeout on outbound call",
        "severity": "medium",
        "why": "`{sym}` awaits the provider with no deadline; a hung upstream pins a worker forever.",
        "rust": ("    let resp = client.send(req).await?;", "    let resp = tokio::time::timeout(REQ_TIMEOUT, client.send(req)).await??;"),
        "python": ("    resp = requests.post(url, json=payload)", "    resp = requests.post(url, json=payload, timeout=10)"),
        "ts": ("  const resp = await fetch(url, opts);", "  const resp = await fetch(url, { ...opts, signal: AbortSignal.timeout(10_000) });"),
        "steps": ["Verify a stalled upstream fails after the timeout.", "Check the timeout is configurable."],
    },
    {
        "title": "Stale cache entry served after invalidation",
        "severity": "low",
        "why": "`{sym}` checks the TTL but not the version, so an invalidated entry is served until expiry.",
        "rust": ("    if entry.age() < self.ttl {", "    if entry.age() < self.ttl && entry.version == self.version {"),
        "python": ("    if time.time() - entry.ts < ttl:", "    if time.time() - entry.ts < ttl and entry.version == current_version:"),
        "ts": ("  if (Date.now() - entry.ts < ttl) {", "  if (Date.now() - entry.ts < ttl && entry.version === version) {"),
        "steps": ["Assert a read after invalidation misses the cache.", "Confirm the hit-rate metric is unchanged for valid entries."],
    },
    {
        "title": "Log line includes request body",
        "severity": "low",
        "why": "`{sym}` logs the whole payload at info level; personal data ends up in log storage.",
        "rust": ("    info!(\"request {:?}\", req);", "    info!(\"request id={}\", req.id);"),
        "python": ("    log.info(\"request %s\", payload)", "    log.info(\"request id=%s\", payload.get(\"id\"))"),
        "ts": ("  console.info('request', body);", "  console.info('request', body.id);"),
        "steps": ["Check no request body appears in logs at info level."],
    },
    {
        "title": "Integer overflow on large offsets",
        "severity": "high",
        "why": "`{sym}` adds offsets as 32-bit values; files above 4 GiB wrap around.",
        "rust": ("    let end = start as u32 + len as u32;", "    let end = (start as u64).checked_add(len as u64).ok_or(Error::Overflow)?;"),
        "python": ("    end = (start + length) & 0xFFFFFFFF", "    end = start + length"),
        "ts": ("  const end = (start + len) | 0;", "  const end = start + len;"),
        "steps": ["Verify a 5 GiB offset round-trips.", "Ensure overflow returns an error instead of wrapping."],
    },
    {
        "title": "Placeholder left in production path",
        "severity": "critical",
        "why": "`{sym}` still contains a placeholder; the branch is reachable from the public API.",
        "rust": ("    todo!(\"handle compaction conflict\")", "    return Err(Error::Conflict { level });"),
        "python": ("    raise NotImplementedError  # TODO", "    raise ConflictError(level)"),
        "ts": ("  throw new Error('TODO');", "  throw new ConflictError(level);"),
        "steps": ["Verify the conflict branch returns a typed error.", "Check no TODO markers remain in the module."],
    },
]

RISK_MARKERS = ["license_expired", "insurance_gap", "open_violation", "bond_insufficient", "scope_mismatch"]
CONTRACTORS = [
    "Northwind Roofing LLC", "Blue Mesa Electric", "Cedar & Sons Plumbing", "Harbor Line Builders",
    "Keystone Concrete Co", "Summit HVAC Services", "Redwood Framing Inc", "Lakeside Solar",
]
SCOPES = ["re-roof, 2,400 sq ft", "panel upgrade 200A", "repipe, 3 bathrooms", "two-storey addition",
          "driveway and retaining wall", "rooftop units x2", "garage conversion", "8 kW PV array"]

SCENARIOS = [
    ("scn-001", "Customer asks for a refund on a duplicated card charge", ["lookup_order", "check_policy", "issue_refund", "notify"]),
    ("scn-002", "Password reset for a locked account with MFA enabled", ["verify_identity", "reset_mfa", "notify"]),
    ("scn-003", "Order shipped to the wrong address", ["lookup_order", "open_claim", "reship", "notify"]),
    ("scn-004", "Bulk export of last quarter's invoices", ["authorize", "run_export", "deliver_link"]),
    ("scn-005", "Cancel a subscription mid-cycle with prorated credit", ["lookup_subscription", "compute_proration", "cancel", "notify"]),
    ("scn-006", "Dispute a late fee citing a service outage", ["lookup_account", "check_incidents", "waive_fee", "notify"]),
    ("scn-007", "Change billing currency for an enterprise account", ["authorize", "check_policy", "escalate"]),
    ("scn-008", "Report a data-deletion request under GDPR", ["verify_identity", "open_dsr", "confirm_deletion"]),
    ("scn-009", "Merge two duplicate customer profiles", ["lookup_account", "dedupe_profiles", "notify"]),
    ("scn-010", "Partial refund for a damaged item with photos", ["lookup_order", "review_evidence", "issue_refund", "notify"]),
]
KB_CITES = ["kb://policies/refunds#3.2", "kb://policies/refunds#4.1", "kb://runbooks/identity#mfa-reset",
            "kb://policies/shipping#claims", "kb://policies/billing#proration", "kb://incidents/2026-02-11",
            "kb://policies/privacy#dsr", "kb://runbooks/accounts#merge", "kb://policies/billing#currency"]

TASK_CLASSES = ["pr_audit", "code_review", "doc_answer"]
MODES = ["baseline", "retrieval", "retrieval_rerank", "matrix"]

# ------------------------------------------------------------------------------------------------


class Gen:
    """Holds the seeded RNG and the rows written so far (so children can point at parents)."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.files: dict[str, list[bytes]] = {}
        self.bad: list[dict[str, Any]] = []
        self.secrets: list[dict[str, Any]] = []

    # time -------------------------------------------------------------------------------------
    def when(self, lo: int = 0, hi: int = SPAN_MINUTES) -> datetime:
        return BASE + timedelta(minutes=self.rng.randrange(lo, hi), seconds=self.rng.randrange(60))

    # output -----------------------------------------------------------------------------------
    def emit(self, stream: str, row: Any) -> int:
        """Append one JSON row to a stream; returns its 1-based line number."""
        line = json.dumps(row, ensure_ascii=False).encode("utf-8")
        self.files.setdefault(stream, []).append(line)
        return len(self.files[stream])

    def emit_raw(self, stream: str, data: bytes, kind: str, reason: str, note: str) -> None:
        """Plant a bad line and record it in the manifest."""
        self.files.setdefault(stream, []).append(data)
        self.bad.append(
            {"file": f"{stream}.jsonl", "line_number": len(self.files[stream]), "kind": kind,
             "expected_reason": reason, "note": note}
        )

    def emit_bad(self, stream: str, row: Any, kind: str, reason: str, note: str) -> None:
        self.emit_raw(stream, json.dumps(row, ensure_ascii=False).encode("utf-8"), kind, reason, note)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def epoch_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def diff_block(path: str, line: int, fn: str, before: str, after: str) -> str:
    """A unified diff hunk (before/after may carry extra '+' lines already prefixed)."""
    b_lines = before.split("\n")
    a_lines = after.split("\n")
    removed = "\n".join(("-" + b_lines[0],) + tuple(l if l.startswith(("-", "+")) else "-" + l for l in b_lines[1:]))
    added = "\n".join(("+" + a_lines[0],) + tuple(l if l.startswith(("-", "+")) else "+" + l for l in a_lines[1:]))
    n_old = 2 + len(b_lines)
    n_new = 2 + len(a_lines)
    return (
        f"--- a/{path}\n+++ b/{path}\n@@ -{line},{n_old} +{line},{n_new} @@ {fn}\n"
        f"     // context\n{removed}\n{added}\n     // context"
    )


def issues_for(g: Gen, lang: str, k: int) -> list[dict[str, Any]]:
    return g.rng.sample([i for i in ISSUES if lang in i], k)


def review_markdown(g: Gen, path: str, lang: str, syms: list[str], attempt: int, quality: str) -> tuple[str, int, str]:
    """A review in markdown. quality: good (concrete findings + patches + steps), weak (vague,
    no patch), wrong (cites symbols that do not exist). Returns (text, findings, max severity)."""
    order = ["info", "low", "medium", "high", "critical"]
    if quality == "weak":
        text = (
            f"# Review: `{path}`\n\n## Summary\nThe module looks mostly fine. There may be some issues with "
            f"error handling and it might be worth adding more tests around `{g.rng.choice(syms)}`.\n\n"
            "## Findings\n\n### 1. General robustness — severity: low, confidence: 0.35\n"
            "Consider reviewing the error paths. Hard to say without running it.\n"
        )
        return text, 1, "low"
    if quality == "wrong":
        ghost = g.rng.choice(["PlanCache::warm", "retry_forever", "legacy_flush_all", "useGlobalStore"])
        text = (
            f"# Review: `{path}`\n\n## Summary\nCritical defect in `{ghost}`, which bypasses validation.\n\n"
            f"## Findings\n\n### 1. `{ghost}` skips schema checks — severity: critical, confidence: 0.91\n"
            f"`{ghost}` (line {g.rng.randrange(40, 400)}) writes without validating.\n\n"
            f"```diff\n--- a/{path}\n+++ b/{path}\n@@ -1,3 +1,3 @@\n-    {ghost}(x)\n+    validate(x); {ghost}(x)\n```\n\n"
            "## Validation\n- Verify the validator runs before every write.\n"
        )
        return text, 1, "critical"
    k = g.rng.choice([1, 2, 2, 3])
    found = issues_for(g, lang, k)
    parts = [
        f"# Review: `{path}`\n",
        "## Summary\n" + g.rng.choice([
            f"{k} issue(s) found; the hot path through `{syms[0]}` needs attention before the next release.",
            f"Reviewed against the architecture notes and symbol index. {k} finding(s), patches below.",
            f"Attempt {attempt}: narrowed the findings to {k} actionable item(s) with patches.",
        ]) + "\n",
        "## Findings\n",
    ]
    steps: list[str] = []
    worst = "info"
    for n, issue in enumerate(found, 1):
        sym = g.rng.choice(syms)
        conf = round(g.rng.uniform(0.55, 0.97), 2)
        line = g.rng.randrange(20, 480)
        before, after = issue[lang]
        worst = max(worst, issue["severity"], key=order.index)
        parts.append(
            f"### {n}. {issue['title']} — severity: {issue['severity']}, confidence: {conf}\n"
            f"{issue['why'].format(sym=sym)} (`{path}`:{line})\n\n"
            f"```diff\n{diff_block(path, line, sym, before, after)}\n```\n"
        )
        steps.extend(issue["steps"])
    parts.append("## Validation\n" + "\n".join(f"- {s}" for s in steps) + "\n")
    return "\n".join(parts), k, worst


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


def gen_scrum_reviews(g: Gen) -> list[dict[str, Any]]:
    """Per-attempt review rows: attempts before the accepted one are not accepted."""
    rows: list[dict[str, Any]] = []
    cycle = 0
    for fi, (path, lang, syms) in enumerate(FILES):
        for _ in range(g.rng.choice([3, 3, 4, 4])):
            cycle += 1
            start = g.when(0, SPAN_MINUTES - 3000)
            accept_on = g.rng.choices([1, 2, 3, 4, 5, None], weights=[55, 18, 10, 6, 3, 8])[0]
            last = accept_on if accept_on is not None else 3
            for attempt in range(1, last + 1):
                accepted = attempt == accept_on
                quality = "good" if accepted else g.rng.choice(["weak", "wrong", "good"])
                model = REVIEW_MODELS[(fi + attempt + cycle) % len(REVIEW_MODELS)]
                text, nfind, worst = review_markdown(g, path, lang, syms, attempt, quality)
                ts = start + timedelta(minutes=7 * attempt, seconds=g.rng.randrange(60))
                row = {
                    "review_id": f"sr-{cycle:04d}-a{attempt}",
                    "cycle": f"cycle-{cycle:04d}",
                    "file": path,
                    "attempt": attempt,
                    "accepted": accepted,
                    "model": model,
                    "prompt": (
                        f"Review `{path}` for defects. For each one give severity, confidence and a "
                        "unified-diff patch; end with the steps that verify the fixes."
                    ),
                    "review": text,
                    "findings": nfind,
                    "max_severity": worst,
                    "matrix_corpora": g.rng.sample(CORPORA, 2),
                    "duration_ms": g.rng.randrange(4_000, 95_000),
                    "tokens": {"prompt": g.rng.randrange(3_000, 14_000), "completion": g.rng.randrange(300, 2_400)},
                    "ts": iso(ts),
                }
                rows.append(row)
    return rows


def gen_observer_reviews(g: Gen, scrum: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    picks = g.rng.sample(scrum, 90)
    for n, sr in enumerate(sorted(picks, key=lambda r: r["review_id"]), 1):
        if sr["accepted"]:
            verdict = g.rng.choices(["accept", "cycle"], weights=[8, 2])[0]
        else:
            verdict = g.rng.choices(["reject", "cycle", "accept"], weights=[7, 2, 1])[0]
        reason = {
            "accept": "Findings are grounded: every cited symbol exists and each patch applies cleanly.",
            "reject": "The review cites behaviour the file does not have; patches do not apply.",
            "cycle": "Directionally right but the severity is overstated and one patch is incomplete.",
        }[verdict]
        ts = datetime.fromisoformat(sr["ts"].replace("Z", "+00:00")) + timedelta(minutes=g.rng.randrange(2, 90))
        rows.append({
            "id": f"obs-{n:04d}",
            "reviewed": sr["review_id"],
            "file": sr["file"],
            "verdict": verdict,
            "observer_model": g.rng.choice(OBSERVER_MODELS),
            "rationale": (
                f"## Observer verdict: {verdict}\n\n{reason}\n\n"
                f"- Checked {sr['findings']} finding(s) in `{sr['file']}` against the symbol index.\n"
                f"- Confirm the patch for finding 1 applies to the current HEAD.\n"
            ),
            "created_at": iso(ts),
        })
    return rows


def gen_audits(g: Gen) -> list[dict[str, Any]]:
    rows = []
    n = 0
    for phase in range(30, 48):
        pr = 180 + phase * 2
        for _ in range(g.rng.randrange(8, 15)):
            n += 1
            path, lang, syms = g.rng.choice(FILES)
            issue = g.rng.choice([i for i in ISSUES if lang in i])
            severity = g.rng.choices(
                ["info", "low", "medium", "high", "critical", issue["severity"]], weights=[20, 25, 15, 6, 3, 10]
            )[0]
            check = g.rng.choice(["static", "dynamic", "cloud", "kb"])
            sym = g.rng.choice(syms)
            line = g.rng.randrange(10, 500)
            before, after = issue[lang]
            body = (
                f"**{issue['title']}** in `{path}`:{line} ({check} check)\n\n"
                f"{issue['why'].format(sym=sym)}\n"
            )
            if severity in ("medium", "high", "critical") or g.rng.random() < 0.3:
                body += f"\nSuggested patch:\n```diff\n{diff_block(path, line, sym, before, after)}\n```\n"
            body += "\n" + "\n".join(f"- {s}" for s in issue["steps"]) + "\n"
            rows.append({
                "finding_id": f"AF-{n:04d}",
                "pr": pr,
                "phase": phase,
                "check": check,
                "topic": issue["title"].lower(),
                "severity": severity,
                "resolution": g.rng.choice(["open", "fixed", "fixed", "waived"]),
                "files": [path],
                "evidence": body,
                "auditor_model": "gpt-oss:120b" if check == "cloud" else None,
                "ts": iso(g.when(phase * 4000 % SPAN_MINUTES, min(SPAN_MINUTES, phase * 4000 % SPAN_MINUTES + 9000))),
            })
    return rows


def gen_contract_analyses(g: Gen) -> list[dict[str, Any]]:
    rows = []
    n = 0
    for p in range(16):
        permit = f"BP-2026-{1040 + p * 7:05d}"
        contractor = CONTRACTORS[p % len(CONTRACTORS)]
        scope = SCOPES[p % len(SCOPES)]
        for attempt in range(1, g.rng.choice([2, 2, 3]) + 1):
            n += 1
            markers = sorted(g.rng.sample(RISK_MARKERS, g.rng.choice([0, 0, 1, 2])))
            verdict = g.rng.choice(["accept", "reject", "cycle", None]) if markers else g.rng.choice(["accept", "accept", "cycle", None])
            lines = [
                f"## Permit {permit} — {contractor}", f"Scope: {scope}.", "",
                "### Checks",
                f"- License status: {'expired 2026-01-31 [1]' if 'license_expired' in markers else 'active through 2027 [1]'}",
                f"- Insurance: {'general liability lapsed for 19 days [2]' if 'insurance_gap' in markers else 'GL and workers comp on file [2]'}",
                f"- Violations: {'1 open stop-work order [3]' if 'open_violation' in markers else 'none open [3]'}",
                "", "### Recommendation",
                ("Do not approve until the listed risks are cleared." if markers else "Approve with standard conditions."),
                "", "Verify the license number against the state registry before issuing.",
                "", "[1] state contractor registry  [2] certificate of insurance  [3] code enforcement log",
            ]
            rows.append({
                "analysis_id": f"ca-{n:03d}",
                "permit_id": permit,
                "contractor": contractor,
                "attempt": attempt,
                "analysis": "\n".join(lines),
                "failure_markers": markers,
                "observer_verdict": verdict,
                "risk_score": round(0.15 + 0.25 * len(markers) + g.rng.uniform(0, 0.1), 2),
                "model": g.rng.choice(REVIEW_MODELS),
                "created_at": iso(g.when()),
            })
    return rows


def gen_auto_apply(g: Gen, scrum: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    accepted = [r for r in scrum if r["accepted"]]
    picks = [sr for sr in accepted for _ in range(g.rng.choice([0, 1, 1, 2]))]
    for n, sr in enumerate(picks, 1):
        path = sr["file"]
        lang = next(l for p, l, _ in FILES if p == path)
        syms = next(s for p, _, s in FILES if p == path)
        issue = g.rng.choice([i for i in ISSUES if lang in i])
        before, after = issue[lang]
        line = g.rng.randrange(20, 480)
        status = g.rng.choices(
            ["committed", "build_reverted", "test_reverted", "skipped_conflict"], weights=[55, 15, 20, 6]
        )[0]
        ts = datetime.fromisoformat(sr["ts"].replace("Z", "+00:00")) + timedelta(minutes=g.rng.randrange(5, 240))
        rows.append({
            "apply_id": f"ap-{n:04d}",
            "source_review": sr["review_id"],
            "file": path,
            "patch": diff_block(path, line, g.rng.choice(syms), before, after),
            "status": status,
            "commit": f"{g.rng.getrandbits(40):010x}" if status != "skipped_conflict" else None,
            "build_ok": status not in ("build_reverted", "skipped_conflict"),
            "tests": {"passed": g.rng.randrange(40, 400), "failed": 0 if status == "committed" else g.rng.randrange(1, 6) if status == "test_reverted" else 0},
            "model": g.rng.choice(REVIEW_MODELS[:3]),
            "ts_ms": epoch_ms(ts),
        })
    return rows


def gen_outcomes(g: Gen) -> list[dict[str, Any]]:
    rows = []
    n = 0
    for sid, title, events in SCENARIOS:
        for run in range(1, g.rng.randrange(5, 8)):
            n += 1
            evs = []
            for e in events:
                ok = g.rng.random() > 0.12
                evs.append({"event": e, "ok": ok, "latency_ms": g.rng.randrange(80, 2400),
                            "citations": g.rng.sample(KB_CITES, g.rng.choice([0, 1, 1, 2]))})
            all_ok = all(e["ok"] for e in evs)
            gaps = g.rng.choices([0, 1, 2], weights=[70, 20, 10])[0] if all_ok else g.rng.choice([0, 1])
            cites = sorted({c for e in evs for c in e["citations"]})
            answer = [f"### {title}", ""]
            for i, e in enumerate(evs, 1):
                status = "done" if e["ok"] else "FAILED"
                ref = f" [{cites.index(e['citations'][0]) + 1}]" if e["citations"] else ""
                answer.append(f"{i}. `{e['event']}` — {status}{ref}")
            answer += ["", "Confirm the customer was notified through the account's preferred channel.", ""]
            answer += [f"[{i}] {c}" for i, c in enumerate(cites, 1)]
            rows.append({
                "outcome_id": f"oc-{n:04d}",
                "scenario_id": sid,
                "scenario": title,
                "run": run,
                "events": evs,
                "all_events_ok": all_ok,
                "gap_signals": gaps,
                "answer": "\n".join(answer),
                "model": g.rng.choice(REVIEW_MODELS),
                "created_at": iso(g.when()),
            })
    return rows


def gen_mode_experiments(g: Gen) -> list[dict[str, Any]]:
    rows = []
    n = 0
    for tc in TASK_CLASSES:
        for path, lang, syms in g.rng.sample(FILES, 11):
            for mode in MODES:
                n += 1
                empty = g.rng.random() < 0.06
                grounded = None if g.rng.random() < 0.12 else round(
                    g.rng.uniform(0.55, 1.0) if mode != "baseline" else g.rng.uniform(0.1, 0.8), 2)
                latency = g.rng.randrange(900, 60_000) if g.rng.random() > 0.08 else g.rng.randrange(121_000, 300_000)
                issue = g.rng.choice([i for i in ISSUES if lang in i])
                output = "" if empty else (
                    f"**{tc}** on `{path}` (mode: {mode})\n\n"
                    f"- {issue['title']}: {issue['why'].format(sym=g.rng.choice(syms))}\n"
                    + "".join(f"- {s}\n" for s in issue["steps"])
                    + (f"\nGrounding: {int(grounded * 100)}% of claims cite indexed symbols.\n" if grounded is not None else "")
                )
                vr: dict[str, Any] = {"citations_checked": g.rng.randrange(2, 12)}
                if grounded is not None:
                    vr["grounded_fraction"] = grounded
                rows.append({
                    "experiment_id": f"mx-{n:04d}",
                    "task_class": tc,
                    "file": path,
                    "mode": mode,
                    "model": g.rng.choice(REVIEW_MODELS),
                    "prompt": f"Run {tc} on `{path}` and report findings with validation steps.",
                    "output": output,
                    "latency_ms": latency,
                    "validation_results": vr,
                    "ts": iso(g.when()),
                })
    return rows


def _parent_time(row: dict[str, Any], key: str) -> datetime:
    v = row[key]
    if isinstance(v, int):
        return datetime.fromtimestamp(v / 1000, tz=UTC)
    return datetime.fromisoformat(v.replace("Z", "+00:00"))


def _child_time(g: Gen, parent: datetime) -> datetime:
    """Mostly after the parent; one in ten before it (the join must then fall back)."""
    if g.rng.random() < 0.1:
        return parent - timedelta(minutes=g.rng.randrange(30, 600))
    return parent + timedelta(minutes=g.rng.randrange(10, 2000))


def gen_distilled_facts(g: Gen, scrum, audits) -> list[dict[str, Any]]:
    rows = []
    src = g.rng.sample(scrum, 100)
    for n, sr in enumerate(sorted(src, key=lambda r: r["review_id"]), 1):
        named = g.rng.random() < 0.6
        issue = g.rng.choice(ISSUES)
        rows.append({
            "fact_id": f"df-{n:04d}",
            "fact": f"In `{sr['file']}`, {issue['title'].lower()} was reported; {issue['steps'][0][0].lower()}{issue['steps'][0][1:]}",
            "origin": {"stream": "scrum_reviews", "task": f"scrum_review:{sr['file']}", **({"run": sr["review_id"]} if named else {})},
            "tags": [sr["max_severity"], sr["file"].split("/")[0]],
            "confidence": round(g.rng.uniform(0.5, 0.95), 2),
            "extractor_model": g.rng.choice(EXTRACTOR_MODELS),
            "extracted_at": iso(_child_time(g, _parent_time(sr, "ts"))),
        })
    for m, path in enumerate(NEVER_REVIEWED * 4, len(rows) + 1):  # orphans: no verdict-bearing parent
        rows.append({
            "fact_id": f"df-{m:04d}",
            "fact": f"`{path}` still uses the v1 export format; migration is tracked separately.",
            "origin": {"stream": "scrum_reviews", "task": f"scrum_review:{path}"},
            "tags": ["legacy"],
            "confidence": 0.6,
            "extractor_model": EXTRACTOR_MODELS[0],
            "extracted_at": iso(g.when()),
        })
    return rows


def gen_distilled_procedures(g: Gen, outcomes) -> list[dict[str, Any]]:
    rows = []
    src = g.rng.sample(outcomes, 44)
    for n, oc in enumerate(sorted(src, key=lambda r: r["outcome_id"]), 1):
        events = [e["event"] for e in oc["events"]]
        steps = [f"Run `{e}` and record its result." for e in events]
        steps.insert(1, "Check the account's policy tier before any money movement.")
        steps.append("Verify every customer-facing claim cites a policy section.")
        rows.append({
            "procedure_id": f"dp-{n:04d}",
            "title": f"How to handle: {oc['scenario']}",
            "steps": steps,
            "origin": {"stream": "outcomes", "task": f"scenario:{oc['scenario_id']}",
                       **({"run": oc["outcome_id"]} if g.rng.random() < 0.5 else {})},
            "extractor_model": g.rng.choice(EXTRACTOR_MODELS),
            "extracted_at": iso(_child_time(g, _parent_time(oc, "created_at"))),
        })
    for m in range(3):
        rows.append({
            "procedure_id": f"dp-{len(rows) + 1:04d}",
            "title": "How to handle: chargeback on a gift card purchase",
            "steps": ["Lookup the gift card ledger.", "Ensure the card balance is frozen before replying."],
            "origin": {"stream": "outcomes", "task": f"scenario:scn-{90 + m:03d}"},
            "extractor_model": EXTRACTOR_MODELS[1],
            "extracted_at": iso(g.when()),
        })
    return rows


def gen_config_hints(g: Gen, modes) -> list[dict[str, Any]]:
    rows = []
    src = g.rng.sample(modes, 40)
    settings = [("retrieval.k", "8", "12"), ("retrieval.rerank", "false", "true"), ("llm.num_ctx", "4096", "8192"),
                ("llm.temperature", "0.7", "0.2"), ("gate.min_checklist_overlap", "0.1", "0.25")]
    for n, mx in enumerate(sorted(src, key=lambda r: r["experiment_id"]), 1):
        key, old, new = g.rng.choice(settings)
        rows.append({
            "hint_id": f"ch-{n:04d}",
            "setting": key,
            "current": old,
            "suggested": new,
            "rationale": f"Mode `{mx['mode']}` on {mx['task_class']} for `{mx['file']}`: raising `{key}` from {old} to {new} "
                         "improved grounding in the experiment. Ensure latency stays under the 120 s budget.",
            "origin": {"stream": "mode_experiments", "task": f"mode:{mx['task_class']}:{mx['file']}",
                       **({"run": mx["experiment_id"]} if g.rng.random() < 0.5 else {})},
            "extractor_model": g.rng.choice(EXTRACTOR_MODELS),
            "created_at": iso(_child_time(g, _parent_time(mx, "ts"))),
        })
    for path in NEVER_REVIEWED:
        rows.append({
            "hint_id": f"ch-{len(rows) + 1:04d}", "setting": "retrieval.k", "current": "8", "suggested": "4",
            "rationale": f"Small module `{path}`: fewer retrieved chunks are enough.",
            "origin": {"stream": "mode_experiments", "task": f"mode:pr_audit:{path}"},
            "extractor_model": EXTRACTOR_MODELS[0], "created_at": iso(g.when()),
        })
    return rows


def gen_escalations(g: Gen, observer) -> list[dict[str, Any]]:
    rows = []
    src = [o for o in observer if o["verdict"] != "accept"]
    for n, ob in enumerate(src[:30], 1):
        rows.append({
            "escalation_id": f"esc-{n:04d}",
            "observer_review": ob["id"] if g.rng.random() < 0.7 else None,
            "file": ob["file"],
            "escalated_to": g.rng.choice(["deepseek-v3.1:671b", "gpt-oss:120b", "human:on-call"]),
            "reason": f"Observer verdict `{ob['verdict']}` on `{ob['file']}`; the local reviewer failed to ground its findings.",
            "summary": f"Escalated review of `{ob['file']}`. Check the cited symbols against HEAD before re-running.",
            "ts": iso(_child_time(g, _parent_time(ob, "created_at"))),
        })
    for path in NEVER_REVIEWED:
        rows.append({
            "escalation_id": f"esc-{len(rows) + 1:04d}", "observer_review": None, "file": path,
            "escalated_to": "human:on-call", "reason": "No reviewer model is configured for this legacy module.",
            "summary": f"Manual review requested for `{path}`.", "ts": iso(g.when()),
        })
    return rows


def gen_audit_facts(g: Gen, audits) -> list[dict[str, Any]]:
    rows = []
    src = g.rng.sample(audits, 60)
    for n, af in enumerate(sorted(src, key=lambda r: r["finding_id"]), 1):
        rows.append({
            "fact_id": f"afx-{n:04d}",
            "phase": af["phase"],
            "finding": af["finding_id"] if g.rng.random() < 0.6 else None,
            "fact": f"Phase {af['phase']}: {af['topic']} ({af['severity']}) in {af['files'][0]}; resolution {af['resolution']}.",
            "extractor_model": g.rng.choice(EXTRACTOR_MODELS),
            "ts": iso(_child_time(g, _parent_time(af, "ts"))),
        })
    for phase in (12, 13):
        rows.append({
            "fact_id": f"afx-{len(rows) + 1:04d}", "phase": phase, "finding": None,
            "fact": f"Phase {phase} predates the auditor; no findings were recorded.",
            "extractor_model": EXTRACTOR_MODELS[0], "ts": iso(g.when()),
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Secrets (for the export firewall) and bad rows (for collect's quarantine)
# ---------------------------------------------------------------------------------------------

FAKE_AWS_KEY = "AKIA" + "QX7RZ2MB5LTN4KD3"
FAKE_GH_TOKEN = "ghp_" + "7fK2qLm9Xv3Rt8Wc1Yb6Nz4Hd0Pj5Sa2Ue7G"


def plant_secrets(g: Gen, streams: dict[str, list[dict[str, Any]]]) -> None:
    """Three otherwise-good accepted rows carry credentials: the export firewall must stop them."""
    sr = next(r for r in streams["scrum_reviews"] if r["accepted"] and r["attempt"] == 1)
    sr["review"] += (
        "\n### Note\nThe integration test still hard-codes a key: "
        f"`aws_access_key_id = {FAKE_AWS_KEY}` and `aws_secret_access_key = "
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY9` — move them to the vault.\n"
    )
    ap = next(r for r in streams["auto_apply"] if r["status"] == "committed")
    ap["patch"] += f"\n+GITHUB_TOKEN = \"{FAKE_GH_TOKEN}\""
    oc = next(r for r in streams["outcomes"] if r["all_events_ok"] and r["gap_signals"] == 0)
    oc["answer"] += "\n\nInternal: connect with postgres://svc_refunds:Sup3rS3cretPassw0rd@db.internal:5432/refunds"
    for stream, row, key in (("scrum_reviews", sr, "review_id"), ("auto_apply", ap, "apply_id"), ("outcomes", oc, "outcome_id")):
        g.secrets.append({"file": f"{stream}.jsonl", "natural_key": row[key], "kind": "credential"})


def plant_bad_rows(g: Gen) -> None:
    """Every kind of bad input, spread across files, each recorded in the manifest."""
    good_scrum = dict(g_last_row(g, "scrum_reviews"))
    good_scrum.update(review_id="sr-bad-attempt", attempt=[1, 2])
    g.emit_bad("scrum_reviews", good_scrum, "wrong_type", "wrong_type", "attempt is a list")
    g.emit_raw("scrum_reviews", b'{"review_id": "sr-bad-json", "file": "api/db/session.py", "attempt": 1, "accepted": tru',
               "malformed_json", "malformed_json", "cut mid-literal, newline-terminated")
    g.emit_raw("scrum_reviews", b'{"review_id": "sr-bad-quote", \'file\': "x"}', "malformed_json", "malformed_json",
               "single-quoted key")

    g.emit_bad("observer_reviews", {"id": "obs-bad-empty", "reviewed": "sr-0001-a1", "file": FILES[0][0], "verdict": "accept",
                                    "observer_model": OBSERVER_MODELS[0], "rationale": "   \n ", "created_at": iso(g.when())},
               "empty_text", "empty_text", "rationale is whitespace")
    g.emit_bad("observer_reviews", {"id": "obs-bad-ts", "reviewed": "sr-0001-a1", "file": FILES[0][0], "verdict": "reject",
                                    "observer_model": OBSERVER_MODELS[0], "rationale": "Patches do not apply.",
                                    "created_at": "last tuesday"},
               "invalid_timestamp", "invalid_timestamp", "created_at is prose")

    g.emit_bad("audits", {"finding_id": "AF-bad-empty", "pr": 250, "phase": 41, "check": "static", "topic": "placeholder",
                          "severity": "high", "resolution": "open", "files": [], "evidence": "", "ts": iso(g.when())},
               "empty_text", "empty_text", "evidence is empty")
    g.emit_raw("audits", b"42", "non_object", "not_an_object", "a bare JSON number")
    g.emit_bad("audits", {"finding_id": "AF-bad-sev", "pr": 250, "phase": 41, "check": "static", "topic": "placeholder",
                          "severity": 3, "resolution": "open", "files": ["api/db/session.py"],
                          "evidence": "Severity was logged as a number.", "ts": iso(g.when())},
               "wrong_type", "wrong_type", "severity is a number")

    bad_utf8 = ('{"analysis_id": "ca-bad-utf8", "permit_id": "BP-2026-09999", "contractor": "Ren').encode() + \
        b"\xe9e \xff\xfe Builders" + b'", "analysis": "x", "failure_markers": [], "created_at": "2026-02-02T10:00:00Z"}'
    g.emit_raw("contract_analyses", bad_utf8, "non_utf8", "invalid_utf8", "latin-1 bytes inside a string")
    g.emit_bad("contract_analyses", {"analysis_id": "ca-bad-markers", "permit_id": "BP-2026-01040", "contractor": CONTRACTORS[0],
                                     "attempt": 9, "analysis": "Markers logged as a string.", "failure_markers": "insurance_gap",
                                     "observer_verdict": "reject", "created_at": iso(g.when())},
               "wrong_type", "wrong_type", "failure_markers is a string, not a list")

    g.emit_raw("auto_apply", b'"committed"', "non_object", "not_an_object", "a bare JSON string")
    g.emit_bad("auto_apply", {"apply_id": "ap-bad-nopatch", "source_review": "sr-0001-a1", "file": FILES[0][0],
                              "status": "committed", "model": REVIEW_MODELS[0], "ts_ms": epoch_ms(g.when())},
               "missing_field", "missing_field", "no patch")

    for k in range(2):
        g.emit_bad("outcomes", {"outcome_id": f"oc-bad-ts{k}", "scenario_id": "scn-003", "scenario": SCENARIOS[2][1], "run": 90 + k,
                                "events": [{"event": "lookup_order", "ok": True, "latency_ms": 120, "citations": []}],
                                "all_events_ok": True, "gap_signals": 0, "answer": "1. `lookup_order` — done",
                                "model": REVIEW_MODELS[0]},
                   "missing_timestamp", "missing_timestamp", "no created_at (the seed's real-data case)")

    huge = {"experiment_id": "mx-bad-huge", "task_class": "doc_answer", "file": FILES[0][0], "mode": "baseline",
            "model": REVIEW_MODELS[0], "prompt": "Run doc_answer.", "output": "", "latency_ms": 1000,
            "validation_results": {}, "ts": iso(g.when())}
    prefix = json.dumps(huge, ensure_ascii=False).encode()
    filler = ("The model repeated itself. " * (HUGE_LINE_BYTES // 27 + 1))[:HUGE_LINE_BYTES]
    huge["output"] = filler
    g.emit_bad("mode_experiments", huge, "huge_line", "line_too_long", f"~3 MB output (line > 1 MiB); prefix {len(prefix)} B")
    g.emit_bad("mode_experiments", {"experiment_id": "mx-bad-latency", "task_class": "pr_audit", "file": FILES[1][0],
                                    "mode": "matrix", "model": REVIEW_MODELS[1], "prompt": "Run pr_audit.",
                                    "output": "Looks fine.", "latency_ms": "fast", "validation_results": {},
                                    "ts": iso(g.when())},
               "wrong_type", "wrong_type", "latency_ms is a string")

    g.emit_bad("distilled_facts", {"fact_id": "df-bad-num", "fact": 12345, "origin": {"stream": "scrum_reviews",
               "task": f"scrum_review:{FILES[0][0]}"}, "extractor_model": EXTRACTOR_MODELS[0], "extracted_at": iso(g.when())},
               "wrong_type", "wrong_type", "fact (text) is a number")
    g.emit_bad("distilled_facts", {"fact_id": "df-bad-empty", "fact": "", "origin": {"stream": "scrum_reviews",
               "task": f"scrum_review:{FILES[0][0]}"}, "extractor_model": EXTRACTOR_MODELS[0], "extracted_at": iso(g.when())},
               "empty_text", "empty_text", "fact is empty")

    g.emit_raw("distilled_procedures", b"[1, 2, 3]", "non_object", "not_an_object", "a JSON array")
    g.emit_bad("distilled_config_hints", {"hint_id": "ch-bad-origin", "setting": "retrieval.k", "current": "8",
                                          "suggested": "12", "rationale": "More context.", "extractor_model": EXTRACTOR_MODELS[0],
                                          "created_at": iso(g.when())},
               "missing_field", "missing_field", "no origin.task (no task id)")
    g.emit_bad("observer_escalations", {"escalation_id": "esc-bad-nots", "observer_review": None, "file": FILES[2][0],
                                        "escalated_to": "human:on-call", "reason": "Timeout.", "summary": "Manual review."},
               "missing_timestamp", "missing_timestamp", "no ts")
    # The torn line must be the very last bytes of the file (no newline): see write().
    g.emit_raw("audit_facts", b'{"fact_id": "afx-torn", "phase": 44, "finding": "AF-0100", "fact": "Phase 44: unbou',
               "torn_line", "torn_line", "unterminated last line (a writer crashed mid-append)")


def g_last_row(g: Gen, stream: str) -> dict[str, Any]:
    return json.loads(g.files[stream][-1])


STREAM_ORDER = [
    "scrum_reviews", "observer_reviews", "audits", "contract_analyses", "auto_apply", "outcomes",
    "mode_experiments", "distilled_facts", "distilled_procedures", "distilled_config_hints",
    "observer_escalations", "audit_facts",
]
TORN_STREAM = "audit_facts"


def build(seed: int = SEED) -> Gen:
    g = Gen(seed)
    scrum = gen_scrum_reviews(g)
    observer = gen_observer_reviews(g, scrum)
    audits = gen_audits(g)
    contracts = gen_contract_analyses(g)
    auto = gen_auto_apply(g, scrum)
    outcomes = gen_outcomes(g)
    modes = gen_mode_experiments(g)
    streams: dict[str, list[dict[str, Any]]] = {
        "scrum_reviews": scrum,
        "observer_reviews": observer,
        "audits": audits,
        "contract_analyses": contracts,
        "auto_apply": auto,
        "outcomes": outcomes,
        "mode_experiments": modes,
        "distilled_facts": gen_distilled_facts(g, scrum, audits),
        "distilled_procedures": gen_distilled_procedures(g, outcomes),
        "distilled_config_hints": gen_config_hints(g, modes),
        "observer_escalations": gen_escalations(g, observer),
        "audit_facts": gen_audit_facts(g, audits),
    }
    plant_secrets(g, streams)
    for name in STREAM_ORDER:
        for row in streams[name]:
            g.emit(name, row)
    # Bad rows go in the middle-to-end of files; shuffle each file's bad rows among its tail
    # by inserting them at seeded positions (line numbers in the manifest stay exact).
    plant_bad_rows(g)
    _interleave_bad_rows(g)
    return g


def _interleave_bad_rows(g: Gen) -> None:
    """Move planted bad lines from the end of each file to seeded positions inside it, except
    the torn line, which must stay last. Manifest line numbers are recomputed."""
    by_file: dict[str, list[dict[str, Any]]] = {}
    for entry in g.bad:
        by_file.setdefault(entry["file"][: -len(".jsonl")], []).append(entry)
    for stream, entries in by_file.items():
        lines = g.files[stream]
        bad_lines = [lines[e["line_number"] - 1] for e in entries]
        good = [l for i, l in enumerate(lines, 1) if i not in {e["line_number"] for e in entries}]
        placed: list[tuple[int, bytes, dict[str, Any]]] = []
        for entry, data in zip(entries, bad_lines, strict=True):
            pos = len(good) + 10**6 if entry["kind"] == "torn_line" else g.rng.randrange(len(good) // 3, len(good))
            placed.append((pos, data, entry))
        placed.sort(key=lambda p: p[0])
        out: list[bytes] = []
        queue = list(placed)
        for i, line in enumerate(good):
            while queue and queue[0][0] <= i:
                _, data, entry = queue.pop(0)
                out.append(data)
                entry["line_number"] = len(out)
            out.append(line)
        for _, data, entry in queue:
            out.append(data)
            entry["line_number"] = len(out)
        g.files[stream] = out
    g.bad.sort(key=lambda e: (e["file"], e["line_number"]))


def render(g: Gen) -> dict[str, bytes]:
    """File name -> exact bytes. Every file ends with a newline except the torn one."""
    out: dict[str, bytes] = {}
    for name in STREAM_ORDER:
        data = b"\n".join(g.files[name])
        out[f"{name}.jsonl"] = data if name == TORN_STREAM else data + b"\n"
    return out


def manifest(g: Gen, files: dict[str, bytes]) -> dict[str, Any]:
    counts = {}
    for name, data in files.items():
        lines = [l for l in data.split(b"\n") if l.strip()]
        bad = sum(1 for b in g.bad if b["file"] == name)
        counts[name] = {"lines": len(lines), "bad": bad, "good": len(lines) - bad}
    return {
        "seed": SEED,
        "generator": "data/sample/generate.py",
        "streams": counts,
        "total_good_rows": sum(c["good"] for c in counts.values()),
        "bad_rows": g.bad,
        "secret_rows": g.secrets,
    }


def write(out_dir: Path) -> dict[str, Any]:
    # Imported here so `--help` works without the package installed; all writes are atomic.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from distill.jsonl import write_atomic

    g = build()
    files = render(g)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(out_dir / name, data)
        (out_dir / name).chmod(0o644)
    man = manifest(g, files)
    write_atomic(out_dir.parent / "bad_rows.json", (json.dumps(man, indent=2, ensure_ascii=False) + "\n").encode())
    (out_dir.parent / "bad_rows.json").chmod(0o644)
    return man


# ---------------------------------------------------------------------------------------------
# Scaled streams (benchmarks/pipeline.py): N rows in the sample's shape, written streaming
# ---------------------------------------------------------------------------------------------

SCALED_SEEDS = 16
"""Distinct generator builds the scaled set cycles through (a build costs ~0.4 s)."""
SCALED_NAMESPACES = 37
"""Repository namespaces a replica's file paths, permits and scenarios are spread over (coprime
with SCALED_SEEDS, so replica content repeats only after 16 * 37 replicas)."""
_SCALED_IDS = re.compile(rb'"(sr|cycle|obs|AF|ca|ap|oc|mx|df|dp|ch|esc|afx)-(\d{3,4})')
_SCALED_TASKS = re.compile(rb"\b(BP-2026|scn)-(\d{3,5})\b")


def _replica_lines(g: Gen, replica: int) -> dict[str, list[bytes]]:
    """One build's lines, namespaced for `replica`: every record id gets an `r<replica>x` infix
    (parents and children keep pointing at each other), and file paths, permits and scenarios
    move into namespace `replica % SCALED_NAMESPACES` (so tasks recur, as in a real workspace).
    The ~3 MB line is kept only in replica 0; torn lines are left out (see write_scaled)."""
    skip = {(b["file"][: -len(".jsonl")], b["line_number"]) for b in g.bad if b["kind"] in ("huge_line", "torn_line")}
    if replica == 0:
        skip = {s for s in skip if not any(b["kind"] == "huge_line" and (b["file"][:-6], b["line_number"]) == s
                                           for b in g.bad)}
    ns = replica % SCALED_NAMESPACES
    id_sub = rb'"\1-r%dx\2' % replica
    task_sub = rb"\1-n%d-\2" % ns
    paths = [(p.encode(), f"m{ns:02d}/{p}".encode()) for p in [f for f, _, _ in FILES] + NEVER_REVIEWED]
    out: dict[str, list[bytes]] = {}
    for name in STREAM_ORDER:
        lines = []
        for n, line in enumerate(g.files[name], 1):
            if (name, n) in skip:
                continue
            if replica:
                line = _SCALED_IDS.sub(id_sub, line)
            line = _SCALED_TASKS.sub(task_sub, line)
            for old, new in paths:
                line = line.replace(old, new)
            lines.append(line)
        out[name] = lines
    return out


def write_scaled(out_dir: Path, rows: int, *, seed: int = SEED) -> dict[str, Any]:
    """Write `rows` source lines across every stream into out_dir (one file per stream).

    Replicas of the sample, each from one of SCALED_SEEDS seeded builds, namespaced so ids are
    unique across replicas; bad rows and planted secrets come along at the sample's rate. The
    last replica is cut to fit `rows`, stream by stream in proportion. Streaming: memory holds one
    replica, never the output. Returns the row count per stream and the total bytes.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from contextlib import ExitStack

    from distill.jsonl import atomic_writer

    if rows < 1:
        raise ValueError("rows must be at least 1")
    builds: dict[int, Gen] = {}
    counts = dict.fromkeys(STREAM_ORDER, 0)
    written = replica = total_bytes = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        sinks = {name: stack.enter_context(atomic_writer(out_dir / f"{name}.jsonl")) for name in STREAM_ORDER}
        while written < rows:
            k = replica % SCALED_SEEDS
            if k not in builds:
                builds[k] = build(seed + k)
            lines = _replica_lines(builds[k], replica)
            size = sum(len(v) for v in lines.values())
            if written + size > rows:  # cut the last replica proportionally, then top up in order
                left = rows - written
                keep = {name: (len(v) * left) // size for name, v in lines.items()}
                for name in STREAM_ORDER:
                    if sum(keep.values()) >= left:
                        break
                    keep[name] = min(len(lines[name]), keep[name] + left - sum(keep.values()))
                lines = {name: v[: keep[name]] for name, v in lines.items()}
            for name, v in lines.items():
                if v:
                    data = b"\n".join(v) + b"\n"
                    sinks[name].write(data)
                    total_bytes += len(data)
                    counts[name] += len(v)
                    written += len(v)
            replica += 1
    for name in STREAM_ORDER:
        (out_dir / f"{name}.jsonl").chmod(0o644)
    return {"rows": written, "replicas": replica, "bytes": total_bytes, "streams": counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "_kb")
    args = parser.parse_args(argv)
    man = write(args.out)
    for name, c in man["streams"].items():
        print(f"{name:24s} {c['good']:5d} good  {c['bad']:2d} bad")
    print(f"{'total':24s} {man['total_good_rows']:5d} good  {len(man['bad_rows']):2d} bad")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
