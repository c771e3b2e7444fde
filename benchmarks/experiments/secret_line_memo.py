"""Experiment (a proposal for the export owner, not product code): export-all CPU with the shipped
SecretScanner vs the same scanner behind a per-line memo. The firewall scans in detect-secrets'
line mode, so a line's hits depend on the line alone and a line seen before need not be scanned
again; the export files (native + quarantine) must come out byte-identical.

    python benchmarks/experiments/secret_line_memo.py orig WS   # WS: a workspace after collect + score
    python benchmarks/experiments/secret_line_memo.py line WS
    (then cmp /tmp/scanfix_orig/exports/... /tmp/scanfix_line/exports/...)
"""
import sys, time, shutil, resource, json
from pathlib import Path
sys.path.insert(0, '/work/main')
mode, src = sys.argv[1], Path(sys.argv[2])
root = Path(f'/tmp/scanfix_{mode}'); shutil.rmtree(root, ignore_errors=True)
shutil.copytree(src / 'evidence', root / 'evidence'); shutil.copytree(src / 'scored-runs', root / 'scored-runs'); (root/'_kb').mkdir()
from distill.config import load_settings
from distill.workspace import Workspace
from distill.export import KINDS, run_export
from distill.export.gates import Firewall, SecretScanner, SecretHit
if mode == 'line':
    orig = SecretScanner._scan_batch
    memo = {}
    def scan_batch(self, texts):
        lines = [t.splitlines() or [""] for t in texts]
        todo = sorted({l for ls in lines for l in ls if l not in memo})
        for l, hits in zip(todo, orig(self, todo)):
            memo[l] = sorted({h.type for h in hits})
        out = []
        for ls in lines:
            hs = [SecretHit(kind, j) for j, l in enumerate(ls, 1) for kind in memo[l]]
            hs.sort(key=lambda x: (x.line, x.type)); out.append(hs)
        return out
    SecretScanner._scan_batch = scan_batch
ws = Workspace.resolve(root); st = load_settings(ws.root)
t = time.process_time(); w = time.perf_counter()
fw = Firewall.from_settings(ws.root, st.export)
reps = [run_export(ws, st, k, firewall=fw) for k in KINDS]
cpu = time.process_time() - t
print(json.dumps({"mode": mode, "cpu_s": cpu, "wall_s": time.perf_counter() - w, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  "totals": {r.stage: r.totals.model_dump(include={"rows_in","written","quarantined","deduped"}) for r in reps},
  "by_reason": {r.stage: r.totals.by_reason for r in reps}}))
