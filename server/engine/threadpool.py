"""A persistent ggml threadpool attached to a llama.cpp context, as llama-server attaches one.

Without one, ggml's CPU backend makes a threadpool for every graph compute (every `llama_decode`) and
frees it afterwards: in a build without OpenMP that is a thread start and join per step; in an OpenMP
build (llama-cpp-python's wheel and `.bench/llama-server` both link libgomp) the threads are OpenMP's
own and persist anyway, so what the pool saves there is an allocation per step, and `poll` (llama.cpp's
`--poll`) only has an effect in a build without OpenMP.

llama-cpp-python 0.3.36 binds none of this, so the functions are declared here over the shared library
it loaded (`libllama` resolves the ggml symbols of its dependencies: one ggml, the one it links).
The layout of `ggml_threadpool_params` is ggml.h's (`GGML_MAX_N_THREADS` = 512).

Order matters: a pool is freed only after the context that uses it is freed or detached from it
(`LlamaModel.close`), else the next decode would run on freed memory.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import llama_cpp

GGML_MAX_N_THREADS = 512
DEFAULT_POLL = 50  # llama.cpp's default (ggml_threadpool_params_init, `--poll`)


class ThreadpoolError(RuntimeError):
    pass


class ThreadpoolParams(ctypes.Structure):
    """`struct ggml_threadpool_params` (ggml/include/ggml.h)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),  # all zero: inherited affinity
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),  # enum ggml_sched_priority
        ("poll", ctypes.c_uint32),  # 0: no polling .. 100: aggressive polling
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class _Api:
    """The functions, declared once per process over the library llama-cpp-python loaded."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.params_default = lib.ggml_threadpool_params_default
        self.params_default.argtypes = [ctypes.c_int]
        self.params_default.restype = ThreadpoolParams
        self.params_match = lib.ggml_threadpool_params_match
        self.params_match.argtypes = [ctypes.POINTER(ThreadpoolParams), ctypes.POINTER(ThreadpoolParams)]
        self.params_match.restype = ctypes.c_bool
        self.new = lib.ggml_threadpool_new
        self.new.argtypes = [ctypes.POINTER(ThreadpoolParams)]
        self.new.restype = ctypes.c_void_p
        self.free = lib.ggml_threadpool_free
        self.free.argtypes = [ctypes.c_void_p]
        self.free.restype = None
        self.attach = lib.llama_attach_threadpool
        self.attach.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.attach.restype = None
        self.detach = lib.llama_detach_threadpool
        self.detach.argtypes = [ctypes.c_void_p]
        self.detach.restype = None


def _library_path() -> Path:
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    name = {"darwin": "libllama.dylib", "win32": "llama.dll"}.get(sys.platform, "libllama.so")
    return lib_dir / name


@functools.cache
def api() -> _Api:
    """The declared functions (the library is the one llama-cpp-python already loaded: same handle)."""
    path = _library_path()
    try:
        return _Api(ctypes.CDLL(str(path)))
    except (OSError, AttributeError) as exc:
        raise ThreadpoolError(f"llama.cpp's threadpool functions are not in {path}: {exc}") from None


def check_poll(poll: int) -> int:
    if not 0 <= poll <= 100:
        raise ValueError(f"poll must be 0..100 (llama.cpp's --poll), got {poll}")
    return poll


class Threadpool:
    """One pool for `n_threads` (generation steps) and, only when `n_threads_batch` differs, a second for
    prompt batches, as llama.cpp's `common_threadpools::init` makes them. `attach` hands them to a
    context; `free` releases them (after the context is freed or detached) and may be called again."""

    def __init__(self, n_threads: int, *, n_threads_batch: int | None = None, poll: int = DEFAULT_POLL) -> None:
        check_poll(poll)
        self._api = api()
        self._attached: list[int] = []  # contexts using the pools
        self.main: int | None = None
        self.batch: int | None = None
        params = self._params(n_threads, poll)
        batch_params = self._params(n_threads_batch or n_threads, poll)
        if not self._api.params_match(ctypes.byref(params), ctypes.byref(batch_params)):
            self.batch = self._api.new(ctypes.byref(batch_params))
            if not self.batch:
                raise ThreadpoolError(f"ggml could not create a threadpool of {batch_params.n_threads} threads")
            params.paused = True  # llama.cpp starts the generation pool paused beside a batch pool
        self.main = self._api.new(ctypes.byref(params))
        if not self.main:
            self.free()
            raise ThreadpoolError(f"ggml could not create a threadpool of {n_threads} threads")
        self.poll = poll
        self.n_threads = n_threads
        self.n_threads_batch = batch_params.n_threads

    def _params(self, n_threads: int, poll: int) -> ThreadpoolParams:
        if not 1 <= n_threads <= GGML_MAX_N_THREADS:
            raise ValueError(f"n_threads must be 1..{GGML_MAX_N_THREADS}, got {n_threads}")
        params: ThreadpoolParams = self._api.params_default(n_threads)
        params.poll = poll
        return params

    @property
    def attached(self) -> bool:
        return bool(self._attached)

    def attach(self, ctx: int | ctypes.c_void_p) -> None:
        if not self.main:
            raise ThreadpoolError("the threadpool was freed")
        address = _address(ctx)
        self._api.attach(address, self.main, self.batch)
        if address not in self._attached:
            self._attached.append(address)

    def detach(self, ctx: int | ctypes.c_void_p) -> None:
        """Give `ctx` back its per-compute pools (it must still be alive)."""
        address = _address(ctx)
        if address in self._attached:
            self._api.detach(address)
            self._attached.remove(address)

    def forget(self, ctx: int | ctypes.c_void_p) -> None:
        """`ctx` was freed: it no longer uses the pool."""
        address = _address(ctx)
        if address in self._attached:
            self._attached.remove(address)

    def free(self) -> None:
        if self._attached:
            raise ThreadpoolError("a context still uses this threadpool: free or detach it first")
        for pool in (self.main, self.batch):
            if pool:
                self._api.free(pool)
        self.main = self.batch = None


def _address(ctx: int | ctypes.c_void_p) -> int:
    value = ctx.value if isinstance(ctx, ctypes.c_void_p) else ctx
    if not value:
        raise ThreadpoolError("no context")
    return int(value)
