"""Fault injection: damaged model files are refused or flagged, never a crash or a traceback.

Seeded bit flips, 4-byte word overwrites and truncations of real exports (float32 and int8,
whole-sequence and streaming) go to `Classifier`, `Stream` and `kerasrnn predict`. A file
carrying its kerasrnn digest must be refused, every time. A copy without a digest (as other
tools write them) may load, with a notice, but never crash a process or end in a traceback.
`pytest tests/test_fuzz.py -s` prints the counts; `-m slow` runs 10,000 damaged files.

The runtime runs in a worker process (this file run as a script), so a crash is counted,
not fatal: the worker is restarted after the case that killed it.
"""

import collections
import json
import logging
import logging.handlers
import os
import subprocess
import sys

import numpy as np
import pytest

# name -> (the session's elman-64 export it damages, see conftest.EXTRA_EXPORTS; streaming)
EXPORTS = {
    "float": ("none", False),
    "int8": ("int8", False),
    "float stream": ("stream", True),
    "int8 stream": ("int8 stream", True),
}
SEED = 2026


def mutate(content: bytes, seed: int) -> bytes:
    """One seeded fault in `content`: a flipped bit, an overwritten word or a truncation."""
    rng = np.random.default_rng(seed)
    kind = str(rng.choice(["bit flip", "word overwrite", "truncation"]))
    data = bytearray(content)
    if kind == "bit flip":
        bit = int(rng.integers(len(data) * 8))
        data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "word overwrite":
        at = 4 * int(rng.integers(len(data) // 4))
        data[at : at + 4] = rng.bytes(4)
    else:
        data = data[: int(rng.integers(len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def exports(exported, test_digits, tmp_path_factory):
    """The session's elman-64 exported four ways, each also copied without its digest, and
    eight test digits: (folder, {name: path}, digits path)."""
    from test_runtime import without_digest

    folder = tmp_path_factory.mktemp("fuzz")
    files = {}
    for name, (export, _) in EXPORTS.items():
        path = exported["elman", export].path
        files[name] = path
        files[f"{name}, no digest"] = without_digest(path, folder)
    digits = str(folder / "digits.npy")
    np.save(digits, (test_digits[0][:8] * 255).round().astype(np.uint8))
    return folder, files, digits


def _predictions(path: str, stream: bool, digits: np.ndarray) -> list[int]:
    """The classes a file gives the digits (the first two, pushed row by row, for streams)."""
    from kerasrnn.export.runtime import Classifier, Stream

    if not stream:
        return Classifier(path).classify(digits).tolist()
    model, classes = Stream(path), []
    for image in digits[:2]:
        model.reset()
        for row in image:
            logits = model.push(row)
        classes.append(int(logits.argmax()))
    return classes


def _worker(manifest: str, start: int) -> None:
    """Runs the manifest's cases from `start` on in this process, printing one JSON outcome
    per line: "refused" (a `ModelFileError`; "aborted in child" when LiteRT aborted in the
    runtime's child process), "input refused" (another `KerasRnnError`), "unchanged" or
    "changed" predictions, or "traceback: ..." (any other exception)."""
    from kerasrnn.errors import KerasRnnError, ModelFileError

    notices = logging.handlers.BufferingHandler(capacity=sys.maxsize)  # keeps every record
    log = logging.getLogger("kerasrnn.export")  # the runtime's and integrity's notices
    log.addHandler(notices)
    log.propagate = False
    with open(manifest) as f:
        job = json.load(f)
    digits = np.load(job["digits"])
    scratch = os.path.join(os.path.dirname(manifest), "case.tflite")
    references = {}
    for index, case in enumerate(job["cases"][start:], start):
        key = (case["original"], case["stream"])
        if key not in references:
            references[key] = _predictions(case["original"], case["stream"], digits)
        with open(case["original"], "rb") as f:
            content = mutate(f.read(), case["seed"])
        with open(scratch, "wb") as f:
            f.write(content)
        notices.buffer.clear()
        try:
            same = _predictions(scratch, case["stream"], digits) == references[key]
            outcome = "unchanged" if same else "changed"
        except ModelFileError as e:
            outcome = "aborted in child" if "LiteRT crashed" in str(e) else "refused"
        except KerasRnnError:
            outcome = "input refused"
        except Exception as e:  # noqa: BLE001 - what the test looks for
            outcome = f"traceback: {type(e).__name__}: {e}"
        print(
            json.dumps({"case": index, "outcome": outcome, "notice": bool(notices.buffer)}),
            flush=True,
        )


def _run_in_workers(cases: list[dict], digits: str, folder) -> list[dict]:
    """Outcomes of `cases` (see `_worker`), run in worker processes; a worker that dies
    gives its case the outcome "crash" and a new worker goes on from the next case."""
    manifest = str(folder / "cases.json")
    with open(manifest, "w") as f:
        json.dump({"cases": cases, "digits": digits}, f)
    outcomes = []
    while len(outcomes) < len(cases):
        worker = subprocess.run(
            [sys.executable, __file__, manifest, str(len(outcomes))],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        outcomes += [json.loads(line) for line in worker.stdout.splitlines()]
        if len(outcomes) < len(cases):
            tail = worker.stderr.strip().splitlines()[-1:]
            outcome = f"crash (status {worker.returncode}) {tail}"
            outcomes.append({"case": len(outcomes), "outcome": outcome, "notice": False})
    return outcomes


def _kerasrnn_predict(path: str, digits: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kerasrnn", "predict", path, digits],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _run_cli(case: dict, digits: str, folder, reference: str) -> dict:
    """The outcome of `kerasrnn predict` on one damaged file (outcomes as in `_worker`;
    `reference` is what it prints for the undamaged file)."""
    with open(case["original"], "rb") as f:
        content = mutate(f.read(), case["seed"])
    path = folder / "cli-case.tflite"
    path.write_bytes(content)
    result = _kerasrnn_predict(str(path), digits)
    last = (result.stderr.strip().splitlines() or [""])[-1]
    if result.returncode < 0:
        outcome = f"crash (signal {-result.returncode})"
    elif "Traceback" in result.stderr or "unexpected error" in result.stderr:
        outcome = f"traceback: {last}"
    elif result.returncode == 0:
        outcome = "unchanged" if result.stdout == reference else "changed"
    elif not last.startswith("kerasrnn: error: "):
        outcome = f"traceback: {last}"
    else:
        outcome = "aborted in child" if "LiteRT crashed" in last else "refused"
    return {"outcome": outcome, "notice": "carries no kerasrnn digest" in result.stderr}


def _report(rows: list[tuple[str, bool, dict]]) -> str:
    """The counts per target and kind of file, as a table."""
    columns = [
        "refused",
        "aborted in child",
        "input refused",
        "unchanged",
        "changed",
        "crash",
        "traceback",
    ]
    counts = collections.defaultdict(collections.Counter)
    for target, sealed, outcome in rows:
        kind = next(c for c in columns if outcome["outcome"].startswith(c))
        counts[(target, "digest" if sealed else "no digest")][kind] += 1
    lines = [f"{'target':<12}{'file':<11}{'tried':>7}" + "".join(f"{c:>18}" for c in columns)]
    for (target, kind), counter in sorted(counts.items()):
        cells = "".join(f"{counter[c]:>18,}" for c in columns)
        lines.append(f"{target:<12}{kind:<11}{sum(counter.values()):>7,}{cells}")
    return "\n".join(lines)


def _cases(files: dict, per_export: int, per_copy: int, per_cli_file: int) -> list[dict]:
    """The seeded cases: each export and its copy without a digest, to `Classifier` or
    `Stream`, and the whole-sequence ones to `kerasrnn predict` too."""
    cases = []
    for name, (_, stream) in EXPORTS.items():
        for sealed, count in ((True, per_export), (False, per_copy)):
            targets = [("Stream" if stream else "Classifier", count)]
            targets += [] if stream else [("predict", per_cli_file)]
            for target, n in targets:
                cases += [
                    {
                        "target": target,
                        "original": files[name if sealed else f"{name}, no digest"],
                        "stream": stream,
                        "sealed": sealed,
                        "seed": SEED + len(cases) + i,
                    }
                    for i in range(n)
                ]
    return cases


@pytest.mark.parametrize(
    "per_export,per_copy,per_cli_file",
    [
        pytest.param(120, 30, 2, id="608"),
        pytest.param(1975, 500, 25, id="10000", marks=pytest.mark.slow),
    ],
)
def test_damaged_files_never_crash_and_files_with_a_digest_are_always_refused(
    exports, per_export, per_copy, per_cli_file
):
    folder, files, digits = exports
    cases = _cases(files, per_export, per_copy, per_cli_file)
    in_workers = [i for i, case in enumerate(cases) if case["target"] != "predict"]
    outcomes = dict(
        zip(in_workers, _run_in_workers([cases[i] for i in in_workers], digits, folder))
    )
    references = {}
    for i, case in enumerate(cases):
        if case["target"] == "predict":
            original = case["original"]
            if original not in references:
                references[original] = _kerasrnn_predict(original, digits).stdout
            outcomes[i] = _run_cli(case, digits, folder, references[original])
    rows = [(case["target"], case["sealed"], outcomes[i]) for i, case in enumerate(cases)]
    print(f"\n{len(rows):,} damaged model files (seed {SEED}):\n{_report(rows)}")
    failures = [
        (target, sealed, outcome)
        for target, sealed, outcome in rows
        if outcome["outcome"].startswith(("crash", "traceback"))
        or (sealed and outcome["outcome"] != "refused")
        or (outcome["outcome"] in ("unchanged", "changed") and not outcome["notice"])
    ]
    assert not failures, failures[:10]


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
