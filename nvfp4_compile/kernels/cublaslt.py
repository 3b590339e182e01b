"""cuBLASLt, called through ``ctypes``: ``D = alpha * (A @ B^T) (+ bias)`` in BF16 (or FP16/FP32)
with ``alpha`` read from device memory.

Why: the emulated NVFP4 GEMM needs ``alpha = S_dec^A * S_dec^B`` applied to the FP32 sum before
the one rounding to the output dtype (NUMERICS.md §6). ``torch.mm`` takes ``alpha`` only as a host
number (reading it would synchronize), so the plain path writes an FP32 product and rounds it
in a second pass: twice the output bytes, and a slower GEMM at training shapes (K = 2048: 79 ms
of GEMMs a step against BF16's 55 ms on an H100, bench/RESULTS.md). cuBLASLt reads ``alpha``
through a device pointer (``CUBLASLT_POINTER_MODE_DEVICE``) and applies it, and the bias, in
the GEMM's FP32 epilogue before its one rounding: the same arithmetic, one pass, BF16 out.
Split-K reductions are limited to FP32 workspaces (no partial sums rounded to BF16).

The library is the copy torch already loaded. Plans (descriptors, layouts and the heuristic's
algorithm) are cached per shape; nothing here synchronizes with the host, so it records into
CUDA graphs. Anything unsupported returns ``None`` and the caller keeps the FP32 path.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import logging
import threading

import torch

log = logging.getLogger(__name__)

# cublasLt.h
_COMPUTE_32F = 68
_DATA_TYPE = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 14}
_OP_N, _OP_T = 0, 1
_DESC_POINTER_MODE, _DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 2, 3, 4, 7, 8
_POINTER_MODE_DEVICE = 1
_EPILOGUE_DEFAULT, _EPILOGUE_BIAS = 1, 4
_PREF_MAX_WORKSPACE_BYTES, _PREF_REDUCTION_SCHEME_MASK = 1, 3
_REDUCTION_SCHEME_COMPUTE_TYPE = 2
WORKSPACE_BYTES = 32 * 2**20


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


class CublasLtError(RuntimeError):
    pass


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"{what} returned cuBLAS status {status}")


def _loaded_library_path() -> str | None:
    """The cuBLASLt that this process has mapped (torch's), so both use one copy."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libcublasLt.so" in path:
                    return path
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def _library():
    torch.cuda.init()
    torch.mm(torch.zeros(8, 8, device="cuda"), torch.zeros(8, 8, device="cuda"))  # cuBLAS(Lt) loaded
    names = [p for p in (_loaded_library_path(),) if p] + ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]
    lib, errors = None, []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as err:
            errors.append(str(err))
    if lib is None:
        raise CublasLtError("cuBLASLt not found: " + "; ".join(errors))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.cublasLtCreate.argtypes = [ctypes.POINTER(vp)]
    lib.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_int]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                               ctypes.c_int64]
    lib.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(vp)]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int,
                                                   ctypes.POINTER(_HeuristicResult), ctypes.POINTER(ctypes.c_int)]
    lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp]
    return lib


@functools.lru_cache(maxsize=None)
def _handle(device: int):
    """One cuBLASLt handle per device, created with that device current."""
    lib = _library()
    handle = ctypes.c_void_p()
    with torch.cuda.device(device):
        _check(lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return handle


class _Plan:
    """Descriptors and algorithm for one (M, N, K, out dtype, bias) on one device."""

    def __init__(self, m: int, n: int, k: int, out_dtype: torch.dtype, bias_dtype: torch.dtype | None, device: int,
                 b_transposed: bool = False, candidates: int = 1):
        lib, handle = _library(), _handle(device)
        self.lock = threading.Lock()
        self.desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), _COMPUTE_32F, _DATA_TYPE[torch.float32]),
               "cublasLtMatmulDescCreate")
        # Row-major C [M, N] = A [M, K] @ B [N, K]^T is column-major C^T [N, M] = op(B) @ A, with B
        # seen as a column-major K x N matrix (transposed) and A as a column-major K x M one. A B
        # that is the transposed view of a row-major [K, N] (a weight read for dgrad) is already the
        # column-major N x K matrix: no transpose.
        trans_b = _OP_N if b_transposed else _OP_T
        for attr, value in ((_DESC_POINTER_MODE, _POINTER_MODE_DEVICE), (_DESC_TRANSA, trans_b), (_DESC_TRANSB, _OP_N),
                            (_DESC_EPILOGUE, _EPILOGUE_BIAS if bias_dtype is not None else _EPILOGUE_DEFAULT)):
            v = ctypes.c_int32(value)
            _check(lib.cublasLtMatmulDescSetAttribute(self.desc, attr, ctypes.byref(v), 4), "MatmulDescSetAttribute")
        self.layouts = []
        b_shape = (n, k) if b_transposed else (k, n)
        for dtype, rows, cols in ((torch.bfloat16, *b_shape), (torch.bfloat16, k, m), (out_dtype, n, m)):
            layout = ctypes.c_void_p()
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), _DATA_TYPE[dtype], rows, cols, rows),
                   "cublasLtMatrixLayoutCreate")
            self.layouts.append(layout)
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "MatmulPreferenceCreate")
        ws, mask = ctypes.c_uint64(WORKSPACE_BYTES), ctypes.c_uint32(_REDUCTION_SCHEME_COMPUTE_TYPE)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws), 8),
               "MatmulPreferenceSetAttribute")
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_REDUCTION_SCHEME_MASK, ctypes.byref(mask), 4),
               "MatmulPreferenceSetAttribute")
        results, found = (_HeuristicResult * candidates)(), ctypes.c_int(0)
        b_layout, a_layout, d_layout = self.layouts
        _check(lib.cublasLtMatmulAlgoGetHeuristic(handle, self.desc, b_layout, a_layout, d_layout, d_layout, pref,
                                                  candidates, results, ctypes.byref(found)),
               "cublasLtMatmulAlgoGetHeuristic")
        if found.value < 1:
            raise CublasLtError(f"no cuBLASLt algorithm for M={m} N={n} K={k} -> {out_dtype}")
        #: The heuristic's algorithms, best first; ``result`` is the one ``matmul`` runs.
        self.results = [results[i] for i in range(found.value)]
        self.result = self.results[0]


@functools.lru_cache(maxsize=256)
def _plan(m: int, n: int, k: int, out_dtype: torch.dtype, bias_dtype: torch.dtype | None, device: int,
          b_transposed: bool) -> _Plan:
    with torch.cuda.device(device):
        return _Plan(m, n, k, out_dtype, bias_dtype, device, b_transposed)


def _kept(make, what: str) -> torch.Tensor:
    """``make()`` run on a thread of its own and finished before returning: a tensor kept across
    calls. CUDA-graph trees route every allocation of the thread that warms up or records a graph
    into that graph's private pool (``_cuda_beginAllocateCurrentThreadToPool``), and a kept tensor
    from there is a live allocation the pool does not track: Inductor refuses to record (and the
    pool's memory would be handed out again under it). Another thread's allocations are not
    routed. Inside a capture nothing may be allocated outside the graph: the caller falls back."""
    if torch.cuda.is_current_stream_capturing():
        raise CublasLtError(f"no {what} yet, and none is made inside a CUDA-graph capture")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(make).result()


def _on_device(device: torch.device, make):
    def run():
        with torch.cuda.device(device):
            t = make()
            torch.cuda.current_stream().synchronize()  # filled before any other stream reads it
            return t
    return run


_workspaces: dict[int, torch.Tensor] = {}


def _workspace(device: torch.device) -> torch.Tensor:
    """Allocated on the first call outside a CUDA-graph capture (``_kept``), and kept."""
    ws = _workspaces.get(device.index)
    if ws is None:
        ws = _workspaces[device.index] = _kept(
            _on_device(device, lambda: torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)),
            "cuBLASLt workspace")
    return ws


_zeros: dict[int, torch.Tensor] = {}


def device_zero(device: torch.device) -> torch.Tensor:
    """An FP32 zero kept on ``device`` (the GEMM's beta), made on first use outside any CUDA-graph
    capture and outside any graph's memory pool (``_kept``)."""
    zero = _zeros.get(device.index)
    if zero is None:
        zero = _zeros[device.index] = _kept(
            _on_device(device, lambda: torch.zeros((), dtype=torch.float32, device=device)), "device zero")
    return zero


def transposed_view(t: torch.Tensor) -> bool:
    """``t [N, K]`` is the transposed view of a row-major ``[K, N]`` (and not also row-major itself)."""
    return not t.is_contiguous() and t.t().is_contiguous()


def supported(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype, bias: torch.Tensor | None) -> bool:
    """BF16 operands with 16-byte aligned rows, ``a`` row-major and ``b`` row-major or a transposed
    view of a row-major tensor, and a bias (if any) of the output dtype."""
    return (a.dtype == b.dtype == torch.bfloat16 and a.is_contiguous() and (b.is_contiguous() or transposed_view(b))
            and a.shape[1] == b.shape[1] and a.shape[1] % 8 == 0 and b.shape[0] % 8 == 0
            and out_dtype in _DATA_TYPE and (bias is None or (bias.dtype == out_dtype and bias.is_contiguous()))
            and all(t.data_ptr() % 16 == 0 for t in (a, b) + ((bias,) if bias is not None else ())))


def matmul(a: torch.Tensor, b: torch.Tensor, alpha_beta: torch.Tensor, bias: torch.Tensor | None,
           out: torch.Tensor, beta: torch.Tensor | None = None, plan: _Plan | None = None) -> torch.Tensor:
    """``out [M, N]`` (contiguous) = ``alpha * (a @ b.T) (+ bias)`` rounded once to ``out``'s dtype;
    ``a [M, K]``, ``b [N, K]`` BF16 (``b`` row-major or a ``transposed_view``), ``alpha_beta``:
    FP32 ``[alpha, 0.0]`` on the device, or with ``beta`` (an FP32 zero on the device) the FP32
    ``alpha`` alone. Raises ``CublasLtError`` when cuBLASLt refuses the problem."""
    m, k = a.shape
    n, out_dtype = b.shape[0], out.dtype
    ws = _workspace(a.device)  # first: raises inside a capture before anything is allocated
    lib, handle = _library(), _handle(a.device.index)
    if plan is None:
        plan = _plan(m, n, k, out_dtype, None if bias is None else bias.dtype, a.device.index, transposed_view(b))
    stream = torch._C._cuda_getCurrentRawStream(a.device.index)
    b_layout, a_layout, d_layout = plan.layouts
    beta_ptr = alpha_beta.data_ptr() + 4 if beta is None else beta.data_ptr()
    with plan.lock:  # the bias pointer lives in the shared descriptor
        if bias is not None:
            ptr = ctypes.c_void_p(bias.data_ptr())
            _check(lib.cublasLtMatmulDescSetAttribute(plan.desc, _DESC_BIAS_POINTER, ctypes.byref(ptr), 8),
                   "MatmulDescSetAttribute(bias)")
        _check(lib.cublasLtMatmul(handle, plan.desc, alpha_beta.data_ptr(), b.data_ptr(), b_layout, a.data_ptr(),
                                  a_layout, beta_ptr, out.data_ptr(), d_layout, out.data_ptr(),
                                  d_layout, ctypes.byref(plan.result.algo), ws.data_ptr(), WORKSPACE_BYTES, stream),
               "cublasLtMatmul")
    return out
