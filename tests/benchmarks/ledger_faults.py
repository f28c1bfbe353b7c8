"""Interrupts at random moments of `unlearn forget` (tiny preset): does the message say exactly what exists
afterwards? Each run gets SIGINT or SIGTERM at a random delay (some during unlearning, some inside the commit,
held there with UNLEARN_COMMIT_PAUSE), then the state is compared with what the process said.

    python tests/benchmarks/ledger_faults.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unlearn import ledger


def one(tmp: Path, rng: random.Random, i: int) -> tuple[str, bool, str]:
    out, resume = tmp / f"m{i}", tmp / f"resume{i}"
    stage = rng.choice([None, None, *ledger.STAGES])
    env = {**os.environ, "UNLEARN_COMMIT_RESUME": str(resume)}
    if stage:
        env["UNLEARN_COMMIT_PAUSE"] = stage
    sig = rng.choice([signal.SIGINT, signal.SIGTERM])
    cmd = [sys.executable, "-m", "unlearn.cli.main", "forget", "--preset", "tiny", "--max-steps", "30",
           "--seed", "0", "--out", str(out), "--ledger", str(tmp / "ledger.jsonl")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    if stage:
        for line in proc.stdout:
            if f"PAUSED {stage}" in line:
                break
    else:
        time.sleep(rng.uniform(3.0, 9.0))
    proc.send_signal(sig)
    time.sleep(0.2)
    resume.touch()
    text = proc.communicate(timeout=300)[0]
    exists = out.exists()
    entries = {Path(r.entry["output"]).name for r in ledger.read_rows(tmp / "ledger.jsonl") if r.entry} \
        if (tmp / "ledger.jsonl").exists() else set()
    said_nothing = "nothing was written" in text
    said_both = "were both written" in text
    finished = proc.returncode == 0
    honest = ((said_nothing and not exists and out.name not in entries)
              or (said_both and exists and out.name in entries)
              or (finished and exists and out.name in entries))
    what = "finished" if finished else ("nothing" if said_nothing else "both" if said_both else "?")
    return f"{signal.Signals(sig).name} at {stage or 'random time'}", honest, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="ledger-faults-"))
    os.environ.setdefault("UNLEARN_LEDGER_KEY_FILE", str(tmp / "key"))
    rows = [one(tmp, rng, i) for i in range(args.runs)]
    for when, honest, what in rows:
        print(f"{when:28} said/did: {what:9} honest: {honest}")
    key = ledger.load_key()
    report = ledger.verify(tmp / "ledger.jsonl", key=key) if (tmp / "ledger.jsonl").exists() else None
    print(f"honest messages: {sum(h for _, h, _ in rows)}/{len(rows)}; ledger verifies: "
          f"{report.ok if report else 'no ledger'} ({report.entries if report else 0} entries)")


if __name__ == "__main__":
    main()
