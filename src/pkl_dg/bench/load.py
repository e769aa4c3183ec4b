"""``pkl-dg bench load``: restoration time on an idle machine and beside one busy process.

Every laptop runs something else. Per case — the default PKL restore of a 512² image and
the default Richardson–Lucy restore of a 2048² image (test images of
:func:`pkl_dg.bench.simulate.test_image`) — the restore is timed end to end (network already
loaded) in a fresh process, as a user's run would start, first with nothing else running
(``idle``) and then beside one competing CPU-bound process started by the benchmark
(``loaded``). Both use the thread policy of :mod:`pkl_dg.threads` (automatic thread count,
passive OpenMP wait); ``--threads`` times another count. The ratio loaded / idle is the
figure of merit (issue: at most 2.5). The 1-minute load average before each run is recorded,
since "idle" means "without our competitor" on a shared machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CASES = {"pkl": 512, "rl": 2048}
SMOKE_CASES = {"pkl": 32, "rl": 48}
BUSY_CODE = "while True: pass"


def _restore_seconds(case: str, size: int, threads: int, smoke: bool) -> dict:
    """One timed restore in this process (called in the child process)."""
    import pkl_dg  # noqa: F401  (sets the OpenMP wait policy before torch loads)
    from pkl_dg.bench.common import benchmark_network
    from pkl_dg.bench.simulate import test_image
    from pkl_dg.restoration import restore_iter
    from pkl_dg.settings import RestoreSettings
    from pkl_dg.settings_rules import uses_prior
    from pkl_dg.threads import apply_threads

    _obj, y = test_image(size)
    settings = RestoreSettings(method=case, threads=threads)
    if smoke:
        settings = settings.replace(steps=2, rl_iterations=2, samples=1)
    net = None
    prior = uses_prior(settings)
    if prior:
        net, _info = benchmark_network(smoke)
    apply_threads(threads)
    t0 = time.perf_counter()
    result = restore_iter(y, settings, denoiser=net).finish()
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "threads": result.metadata["threads"],
            "omp_wait_policy": result.metadata["omp_wait_policy"],
            "steps": settings.steps if prior else settings.rl_iterations,
            "samples": settings.samples if prior else None}


def _timed_child(case: str, size: int, threads: int, smoke: bool) -> dict:
    cmd = [sys.executable, "-m", "pkl_dg.bench.load", case, str(size), str(threads),
           "smoke" if smoke else "full"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"timed restore {case} {size}² failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_load(threads: int = 0, repeats: int = 1, smoke: bool = False, log=print,
             only: list[str] | None = None) -> dict:
    """Time each case (or those in ``only``) idle and beside one busy process, interleaved;
    medians over ``repeats``."""
    from pkl_dg.bench.common import machine_info, now_iso

    cases = SMOKE_CASES if smoke else CASES
    if only:
        unknown = set(only) - set(cases)
        if unknown:
            raise ValueError(f"unknown case(s) {', '.join(sorted(unknown))}: choose from "
                             f"{', '.join(cases)}")
        cases = {c: n for c, n in cases.items() if c in only}
    rows = []
    for case, size in cases.items():
        row: dict = {"case": case, "size": size}
        runs: dict[str, list] = {"idle": [], "loaded": []}
        for _ in range(repeats):  # interleaved, so drifting background load hits both
            for condition in ("idle", "loaded"):
                busy = None
                if condition == "loaded":
                    busy = subprocess.Popen([sys.executable, "-c", BUSY_CODE])
                    time.sleep(0.5)
                try:
                    load_avg = round(os.getloadavg()[0], 2)
                    info = _timed_child(case, size, threads, smoke)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                runs[condition].append((info["seconds"], load_avg))
                row.update(threads=info["threads"], omp_wait_policy=info["omp_wait_policy"],
                           steps=info["steps"], samples=info["samples"])
                log(f"load: {case} {size}² {condition}: {info['seconds']:.1f} s "
                    f"({info['threads']} thread(s), load average {load_avg})")
        for condition, got in runs.items():
            times = [t for t, _ in got]
            row[condition] = {"seconds": sorted(times)[len(times) // 2], "all": times,
                              "load_average_1min": [a for _, a in got]}
        row["ratio"] = round(row["loaded"]["seconds"] / row["idle"]["seconds"], 2)
        row["repeats"] = repeats
        row["created"] = now_iso()
        rows.append(row)
    return {"kind": "load", "created": now_iso(), "machine": machine_info(),
            "threads_requested": threads, "repeats": repeats, "smoke": smoke, "rows": rows}


def load_section(load: dict) -> list[str]:
    """The BENCHMARKS.md section of a ``bench load`` result (rows of several runs, each with
    its thread count and note)."""
    label = {"pkl": "PKL (default settings)", "rl": "Richardson–Lucy (default settings)"}
    lines = ["## Under load: one competing CPU-bound process", "",
             f"`pkl-dg bench load` ({load['created']}): each restore timed end to end in a "
             "fresh process, idle and beside one `while True: pass` process, OpenMP wait "
             "passive, at the thread count in the table ('automatic': `threads = 0`, physical "
             "cores − 1); idle and loaded runs interleaved, medians. The load averages are the "
             "machine's 1-minute figures before the runs (highest), other jobs included: "
             "'idle' means without our competitor.", "",
             "| case | size | threads | idle (s) | under load (s) | ratio | load average "
             "idle / loaded | runs each |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in load["rows"]:
        what = label.get(r["case"], r["case"])
        if r.get("samples"):
            what += f", {r['steps']} steps × {r['samples']} samples"
        else:
            what += f", {r['steps']} iterations"
        threads = f"{r['threads']}" + (" (automatic)" if not r.get("threads_requested") else "")
        note = r.get("note", load.get("note"))
        if note:
            if note not in notes:
                notes.append(note)
            what += f" [{notes.index(note) + 1}]"
        lines.append(f"| {what} | {r['size']}² | {threads} | {r['idle']['seconds']:.1f} "
                     f"| {r['loaded']['seconds']:.1f} | **{r['ratio']:.2f}×** | "
                     f"{max(r['idle']['load_average_1min']):.1f} / "
                     f"{max(r['loaded']['load_average_1min']):.1f} | "
                     f"{r.get('repeats', load.get('repeats', 1))} |")
    lines.append("")
    lines += [f"[{i}] {n}" + ("" if n.endswith(".") else ".") for i, n in enumerate(notes, 1)]
    return lines + ([""] if notes else [])


if __name__ == "__main__":  # the timed child: case size threads smoke|full
    _case, _size, _threads, _mode = sys.argv[1:5]
    print(json.dumps(_restore_seconds(_case, int(_size), int(_threads), _mode == "smoke")))
