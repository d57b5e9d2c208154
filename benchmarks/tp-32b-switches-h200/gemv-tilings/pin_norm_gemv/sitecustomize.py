"""MILI_PIN_NORM_GEMV="n,k,warps,stages,blocks" pins the tiling of the GEMVs that normalise their
input (BLOCK_N, BLOCK_K, num_warps, num_stages, row blocks per program); the others keep the
autotuner's choice among the one-block tilings. Put this folder first on PYTHONPATH (the worker
ranks start from the same environment, so they are pinned too). Written for a tree whose GEMV
took a BLOCKS parameter (see README.md); a probe, not part of the engine."""
import os

spec = os.environ.get("MILI_PIN_NORM_GEMV")
if spec:
    import importlib

    import triton

    n, k, w, s, b = (int(v) for v in spec.split(","))
    linear = importlib.import_module("mili.kernels.linear")
    pinned = triton.Config({"BLOCK_N": n, "BLOCK_K": k, "BLOCKS": b}, num_warps=w, num_stages=s)

    def prune(configs, named_args, **kwargs):
        if kwargs.get("INPUT", "plain") != "plain":
            return [pinned]
        return [c for c in configs if c.kwargs.get("BLOCKS", 1) == 1]

    linear._gemv_tuned.early_config_prune = prune
