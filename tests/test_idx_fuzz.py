"""Mutated IDX files: every one is read or refused with `IdxError`, fast, in bounded memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasrnn import data, idx
from kerasrnn.config import DataConfig

# Runs in a child limited to 1 GiB of address space, with an alarm per case: a hang or a
# runaway allocation is caught and counted, never taken for a pass.
_FUZZ = textwrap.dedent("""
    import json, os, resource, signal, sys
    import numpy as np
    from kerasrnn import idx
    from kerasrnn.errors import IdxError

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError()))
    folder, cases = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(int(sys.argv[3]))
    names = sorted(os.listdir(folder))
    originals = {n: open(os.path.join(folder, n), "rb").read() for n in names}
    counts = {"cases": 0, "read": 0, "refused": 0, "other": [], "hung": 0}
    for case in range(cases):
        name = names[case % len(names)]
        content = bytearray(originals[name])
        how = rng.integers(4)
        if how == 0:  # flip a bit
            i = int(rng.integers(len(content)))
            content[i] ^= 1 << int(rng.integers(8))
        elif how == 1:  # overwrite a header word (dimensions, magic)
            i = int(rng.integers(0, 4)) * 4
            content[i:i + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif how == 2:  # truncate
            del content[int(rng.integers(len(content))):]
        else:  # append garbage
            content += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        path = os.path.join(folder, "mutated-" + name)
        with open(path, "wb") as f:
            f.write(bytes(content))
        read = idx.read_images if "images" in name else idx.read_labels
        counts["cases"] += 1
        signal.alarm(5)
        try:
            read(path)
            counts["read"] += 1
        except IdxError as e:
            counts["refused"] += 1
            assert "\\n" not in str(e) and path in str(e), str(e)
        except TimeoutError:
            counts["hung"] += 1
        except Exception as e:  # MemoryError included
            counts["other"].append(f"{type(e).__name__}: {e}"[:200])
        finally:
            signal.alarm(0)
    print(json.dumps(counts))
""")


@pytest.mark.parametrize(
    "cases", [pytest.param(400, id="400"), pytest.param(10_000, id="10000", marks=pytest.mark.slow)]
)
def test_mutated_idx_files_are_read_or_refused_in_bounded_memory(tmp_path, cases):
    images, labels = data.load_arrays(DataConfig(source="sample"), "test")
    for suffix in ("", ".gz"):
        idx.write(str(tmp_path / f"t10k-images-idx3-ubyte{suffix}"), images[:20])
        idx.write(str(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"), labels[:20].astype(np.uint8))
    result = subprocess.run(
        [sys.executable, "-c", _FUZZ, str(tmp_path), str(cases), "0"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout)
    assert counts["cases"] == cases and counts["hung"] == 0, counts
    assert counts["other"] == [], counts["other"][:5]
    assert counts["refused"] > cases / 4  # most mutations break the file, and are refused
