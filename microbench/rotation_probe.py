"""Device probe: the query/output rotation GEMM, float32 path vs the 16-bit ±1 path.

    python -m microbench.rotation_probe

Times both on q [8192 * 32 heads, 128] bf16 (CUDA events via triton's do_bench, median) and
checks both against a float64 rotation (relative error; both round once to bf16)."""

import math

import torch
from triton.testing import do_bench

from fa4_tq.codec import rademacher_signs, rotate
from fa4_tq.kernels.rotation import apply_rotation, rotation_matrix


def fp32_rotation(x, signs):
    """The previous implementation: float32 GEMM (TF32 off) against R / sqrt(D)."""
    m = rotation_matrix(signs) / math.sqrt(x.shape[-1])
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return torch.mm(x.reshape(-1, x.shape[-1]).float(), m).to(x.dtype).reshape(x.shape)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def main():
    dev = "cuda"
    signs = rademacher_signs(128, 0, 0).to(dev)
    for rows in (1 * 32, 8 * 32, 8192 * 32, 16384 * 32):
        x = torch.randn(rows, 128, device=dev).to(torch.bfloat16)
        ref = rotate(x.double(), signs.double())
        new = apply_rotation(x, rotation_matrix(signs))
        old = fp32_rotation(x, signs)
        e_new = float((new.double() - ref).norm() / ref.norm())
        e_old = float((old.double() - ref).norm() / ref.norm())
        t_new = do_bench(lambda: apply_rotation(x, rotation_matrix(signs)), return_mode="median")
        t_old = do_bench(lambda: fp32_rotation(x, signs), return_mode="median")
        print(f"rotation rows={rows:>7}  fp32: {t_old * 1e3:8.1f} us err {e_old:.2e}   "
              f"16-bit ±1: {t_new * 1e3:8.1f} us err {e_new:.2e}   speedup {t_old / t_new:5.2f}x")


if __name__ == "__main__":
    main()
