"""`make demo`: the toolkit's main job on the embedded head phantom (128^3, 25 views).

Runs the best pipeline this installation has, says which, and writes its run folder
to `out/demo/` (or the folder given as the only argument).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path("out/demo")
    started = time.perf_counter()
    if importlib.util.find_spec("pipelines.diffnr") is not None:
        from pipelines import diffnr

        print(f"demo: DiffNR (Gaussians + compact SliceFixer) on the embedded scan -> {out}")
        diffnr.main(["--out", str(out), "--compare"])
    else:
        from pipelines import recon

        print(
            "demo: the DiffNR pipeline is not available in this version; running the best "
            f"available reconstruction (ASD-POCS) on the embedded scan -> {out}"
        )
        recon.main(["--method", "asd_pocs", "--views", "25", "--out", str(out)])
    print(f"demo: done in {time.perf_counter() - started:.0f} s; outputs in {out}/")


if __name__ == "__main__":
    main()
